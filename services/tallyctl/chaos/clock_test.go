//go:build chaos

package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/services/ledger/engine"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
)

// Scenario 9 settings.
const (
	// idleTickMs is the ledger's LEDGER_TICK_INTERVAL_MS in the scenario.
	idleTickMs = 200
	// idleBound bounds (generously: a liveness bound, not a speed measurement) how long after
	// an expiry the ledger may take to post it with no customer traffic.
	idleBound = 60 * time.Second
	// promoGapA1/A2: the promotions expire this long after they are granted.
	promoGapA1 = 20 * time.Second
	promoGapA2 = 30 * time.Second
)

// idleAccounts picks three account ids on three different events-topic partitions.
func idleAccounts() (a1, a2, b string) {
	used := map[int]bool{}
	pick := func(prefix string) string {
		for i := 0; ; i++ {
			id := fmt.Sprintf("%s-%d", prefix, i)
			if p := partitionOf(id); !used[p] {
				used[p] = true
				return id
			}
		}
	}
	return pick("idle-promo-a1"), pick("idle-promo-a2"), pick("idle-hold-b")
}

// TestIdleExpiry is scenario 9: with no customer traffic,
// an abandoned hold is released and an expired promotion posted to breakage within a bounded
// time, because the ledger publishes clock ticks into its idle partitions; and the admitter
// refuses to fund a hold from a promotion whose expiry has passed even when the ledger has
// published nothing since (it is stopped). The ledger, replay and ClickHouse then agree as in
// every scenario (ticks included in the reference fold, skipped by the sink).
func TestIdleExpiry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	h := NewHarness(t)
	led := h.Ledger(fmt.Sprintf("LEDGER_TICK_INTERVAL_MS=%d", idleTickMs))
	h.Sink()
	adm := h.Admitter("a1", 1)
	cl, err := client.New(client.Config{BaseURL: "http://" + adm.Addr, APIKey: h.APIKey,
		HTTPClient: &http.Client{Timeout: 5 * time.Second}, AttemptsMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	s := Summary{Scenario: "9 idle expiry", OverAdmission: "n/a (single admitter)"}
	a1, a2, b := idleAccounts()
	// Warm-up: b's purchase must reach the admitter before the promotions' clocks start, so a
	// slow first consumer-group join or topic creation on a fresh broker cannot eat the
	// promotions' lifetime (the first CI run of this scenario waited on a1's promotion after
	// it had already expired).
	mustAdmin(t, ctx, h, led, http.MethodPut, "/v1/accounts/"+b, map[string]any{"tier": "pro", "priority": "standard"})
	mustAdmin(t, ctx, h, led, http.MethodPost, "/v1/accounts/"+b+"/grants",
		map[string]any{"grant_id": "paid-" + b, "amount_micros": 10_000_000, "source": "purchase", "priority": 100})
	probe := events.Units{TokensIn: 1, TokensOut: 1}
	seen := func(acct string, want int64) func() error {
		return func() error {
			r, err := cl.Admit(ctx, api.AdmitRequest{RequestID: fmt.Sprintf("probe-%d", time.Now().UnixNano()), AccountID: acct,
				Endpoint: "codex.responses", Estimate: probe})
			if err != nil {
				return err
			}
			_, _ = cl.Finish(ctx, api.FinishRequest{RequestID: r.RequestID, Status: events.StatusCancelled})
			if got := r.Remaining.AvailableMicros + r.HoldMicros; got != want {
				return fmt.Errorf("admitter sees %d µ on %s, want %d", got, acct, want)
			}
			return nil
		}
	}
	warm := time.Now()
	if err := eventually(ctx, 60*time.Second, seen(b, 10_000_000)); err != nil {
		t.Fatalf("pipeline not live after %s: the admitter never saw %s's purchase: %v", time.Since(warm).Round(time.Millisecond), b, err)
	}
	s.Notes = append(s.Notes, fmt.Sprintf("pipeline live (grant to admitter) after %s", time.Since(warm).Round(time.Millisecond)))
	granted := time.Now().UTC()
	exp1, exp2 := granted.Add(promoGapA1), granted.Add(promoGapA2)
	for _, g := range []struct {
		acct string
		exp  time.Time
	}{{a1, exp1}, {a2, exp2}} {
		mustAdmin(t, ctx, h, led, http.MethodPut, "/v1/accounts/"+g.acct, map[string]any{"tier": "pro", "priority": "standard"})
		mustAdmin(t, ctx, h, led, http.MethodPost, "/v1/accounts/"+g.acct+"/grants",
			map[string]any{"grant_id": "paid-" + g.acct, "amount_micros": 1_000_000, "source": "purchase", "priority": 100})
		mustAdmin(t, ctx, h, led, http.MethodPost, "/v1/accounts/"+g.acct+"/grants",
			map[string]any{"grant_id": "promo-" + g.acct, "amount_micros": 5_000_000, "source": "promotion", "priority": 0, "expires_at": g.exp})
	}

	// The admitter sees a1's 6 credits (1 paid + 5 promotion): a zero-cost probe, before the
	// promotion expires.
	if err := eventually(ctx, time.Until(exp1.Add(-2*time.Second)), seen(a1, 6_000_000)); err != nil {
		t.Fatalf("admitter never saw %s's grants %s after they were made (promotion expires at +%s): %v",
			a1, time.Since(granted).Round(time.Millisecond), promoGapA1, err)
	}
	// b: a 2-credit hold (sora.video 10 s at 720p) that is never finished.
	video := events.Units{VideoSeconds: 10, Resolution: "720p"}
	var held *api.AdmitResponse
	if err := eventually(ctx, 60*time.Second, func() error {
		r, err := cl.Admit(ctx, api.AdmitRequest{RequestID: "abandoned-" + b, AccountID: b, Endpoint: "sora.video", Estimate: video})
		if err != nil {
			return err
		}
		held = r
		return nil
	}); err != nil || held.HoldMicros != 2_000_000 || held.HoldExpiresAt == nil {
		t.Fatalf("hold on %s: %+v %v", b, held, err)
	}
	account := func(id string) (view.Account, error) {
		var v view.Account
		code, err := h.Admin(ctx, led.Addr, http.MethodGet, "/v1/accounts/"+url.PathEscape(id), nil, &v)
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("GET account %s: %d", id, code)
		}
		return v, err
	}
	if err := eventually(ctx, 60*time.Second, func() error {
		v, err := account(b)
		if err == nil && v.HeldMicros != 2_000_000 {
			err = fmt.Errorf("%s held %d", b, v.HeldMicros)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// 1. No more customer traffic: the abandoned hold is released by the ticks alone.
	var released time.Time
	if err := eventually(ctx, time.Until(*held.HoldExpiresAt)+idleBound, func() error {
		v, err := account(b)
		if err == nil && (v.HeldMicros != 0 || v.AvailableMicros != 10_000_000) {
			err = fmt.Errorf("%s held %d available %d", b, v.HeldMicros, v.AvailableMicros)
		}
		released = time.Now()
		return err
	}); err != nil {
		t.Fatalf("abandoned hold not released with no traffic: %v", err)
	}
	s.Notes = append(s.Notes, fmt.Sprintf("abandoned hold released %s after its expiry (ticks every %d ms, no customer traffic)",
		released.Sub(*held.HoldExpiresAt).Round(10*time.Millisecond), idleTickMs))

	// 2. With the ledger stopped (no tick, no new balance), the admitter stops counting a1's
	// promotion once its expiry passes: a 2-credit request finds only the 1 paid credit.
	if time.Now().After(exp1.Add(-time.Second)) {
		t.Fatalf("setup took too long: a1's promotion expires at %s", exp1)
	}
	led.Stop()
	time.Sleep(time.Until(exp1) + 50*time.Millisecond)
	_, err = cl.Admit(ctx, api.AdmitRequest{RequestID: "after-expiry-" + a1, AccountID: a1, Endpoint: "sora.video", Estimate: video})
	var denied *client.DeniedError
	if !errors.As(err, &denied) || denied.Reason != "insufficient_credits" {
		t.Fatalf("admitter funded a 2-credit hold from an expired promotion (ledger stopped): %v", err)
	}
	s.Notes = append(s.Notes, "admitter refused a 2-credit hold on 1 paid + 5 expired promotion credits while the ledger was stopped")
	h.StartReady(led)

	// 3. a2's promotion expires while the ledger runs and a2's partition is idle: breakage.
	var posted time.Time
	if err := eventually(ctx, time.Until(exp2)+idleBound, func() error {
		v, err := account(a2)
		if err == nil && (v.AvailableMicros != 1_000_000 || len(v.Grants) != 1) {
			err = fmt.Errorf("%s available %d grants %d", a2, v.AvailableMicros, len(v.Grants))
		}
		posted = time.Now()
		return err
	}); err != nil {
		t.Fatalf("expired promotion not posted with no traffic: %v", err)
	}
	s.Notes = append(s.Notes, fmt.Sprintf("expired promotion posted to breakage %s after its expiry", posted.Sub(exp2).Round(10*time.Millisecond)))
	var ents view.Entries
	if _, err := h.Admin(ctx, led.Addr, http.MethodGet, "/v1/accounts/"+a2+"/entries?limit=100", nil, &ents); err != nil {
		t.Fatal(err)
	}
	breakage := int64(0)
	for _, e := range ents.Entries {
		if e.Kind == "breakage" && e.LedgerAccount == events.LedgerBreakage {
			breakage += e.AmountMicros
		}
	}
	if breakage != 5_000_000 {
		t.Errorf("%s: breakage %d µ in the journal, want 5000000", a2, breakage)
	}
	// a2's partition carried nothing but ticks after a2's promotion was granted: the clock
	// that expired it came from the ledger's ticks.
	p2 := partitionOf(a2)
	var grantOff int64 = -1
	var after []string
	ticks := 0
	if err := engine.ReadAll(ctx, h.Kafka.Brokers, h.Kafka.Topics.Events, func(m kafka.Message) error {
		if m.Partition != p2 {
			return nil
		}
		ev, err := events.Decode(m.Value)
		if err != nil {
			return nil
		}
		switch p := ev.Payload.(type) {
		case events.CreditsGranted:
			if p.GrantID == "promo-"+a2 {
				grantOff = m.Offset
				return nil
			}
		case events.ClockTick:
			if grantOff >= 0 {
				ticks++
			}
			return nil
		}
		if grantOff >= 0 {
			after = append(after, ev.Type+" for "+ev.Subject)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if grantOff < 0 || len(after) != 0 || ticks == 0 {
		t.Errorf("partition %d after a2's promotion (offset %d): %d ticks and customer events %v", p2, grantOff, ticks, after)
	}
	s.Faults = fmt.Sprintf("no customer traffic after setup; ledger stopped across a promotion's expiry; %d ticks on the idle partition", ticks)
	Verify(t, ctx, h, nil, VerifyOptions{Ledger: led, Sink: true}, &s)
	Report(t, s)
}
