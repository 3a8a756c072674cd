package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/admitter"
	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/services/ledger/webhook"
	"github.com/tallyhq/tally/services/sink"
	"github.com/tallyhq/tally/services/tallyctl/stack"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// movedClock is the ledger's clock in TestCommercialLayer (ledger.Config.Now): the admin API
// stamps its events, and their Kafka records, with it.
type movedClock struct{ ns atomic.Int64 }

func (c *movedClock) Now() time.Time  { return time.Unix(0, c.ns.Load()).UTC() }
func (c *movedClock) Set(t time.Time) { c.ns.Store(t.UnixNano()) }

// hookReceiver is a real local HTTP receiver of the ledger's webhooks: it checks every
// signature and counts the deliveries of each Tally-Webhook-Id.
type hookReceiver struct {
	secret []byte
	mu     sync.Mutex
	count  map[string]int
	what   map[string]string
	bad    []string
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	h.mu.Lock()
	defer h.mu.Unlock()
	id := r.Header.Get("Tally-Webhook-Id")
	if err := webhook.Verify(h.secret, r.Header.Get("Tally-Signature"), body, time.Now(), 5*time.Minute); err != nil {
		h.bad = append(h.bad, fmt.Sprintf("%s: %v", id, err))
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	ev, err := events.Decode(body)
	if err != nil || ev.ID != id {
		h.bad = append(h.bad, fmt.Sprintf("%s: body %v (envelope id %q)", id, err, ev.ID))
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	switch p := ev.Payload.(type) {
	case events.Notification:
		h.what[id] = fmt.Sprintf("%s/%d@%s", p.Kind, p.ThresholdPermille, p.PeriodStart.Format("01-02"))
	case events.TopUpRequested:
		h.what[id] = fmt.Sprintf("topup/%d@%d", p.AmountMicros, p.AvailableMicros)
	default:
		h.what[id] = ev.Type
	}
	h.count[id]++
	w.WriteHeader(http.StatusNoContent)
}

// seen returns the distinct deliveries (sorted), the ids delivered more than once, and the
// refused ones.
func (h *hookReceiver) seen() (kinds, repeated, bad []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, n := range h.count {
		kinds = append(kinds, h.what[id])
		if n > 1 {
			repeated = append(repeated, fmt.Sprintf("%s ×%d", h.what[id], n))
		}
	}
	sort.Strings(kinds)
	return kinds, repeated, append([]string(nil), h.bad...)
}

// TestCommercialLayer runs plans, renewals, notifications, top-ups and customer keys end to
// end on the whole pipeline (ledger, sink, the embedded ClickHouse engine, the webhook
// dispatcher; real Kafka when KAFKA_BROKERS is set): an account subscribes to the "pro"
// plan, the ledger's clock moves through two renewals
// (Jan 31 -> Feb 28 -> Mar 31, calendar-correct) with usage in each period and a top-up
// purchase, the threshold notifications and the auto-top-up request reach a real HTTP
// receiver signed and exactly once each, a customer key scoped to the account reads its
// balance, subscription and period usage (and nothing else), and tallyctl reconcile finds the
// replay, the live ledger and ClickHouse equal to the micro-credit.
//
// Log time is moved the way a real Kafka 4 broker allows (records stamped at most an hour
// ahead of the wall clock): the months lie in the past. The usage is published as an
// admitter publishes it (request.started then request.finished, acks=all, keyed by account),
// stamped with the moved clock; the admitter itself has no settable clock.
func TestCommercialLayer(t *testing.T) {
	noStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const acct = "acct-sub"
	jan31 := time.Date(2026, 1, 31, 9, 0, 0, 0, time.UTC)
	feb28 := time.Date(2026, 2, 28, 9, 0, 0, 0, time.UTC)
	mar31 := time.Date(2026, 3, 31, 9, 0, 0, 0, time.UTC)
	clock := &movedClock{}
	clock.Set(jan31)

	hooks := &hookReceiver{secret: []byte(strings.Repeat("s", 32)), count: map[string]int{}, what: map[string]string{}}
	receiver := httptest.NewServer(hooks)
	t.Cleanup(receiver.Close)
	keysFile := filepath.Join(t.TempDir(), "customer-keys")
	st := startCLIStackWith(t, stack.Config{CustomerKeysFile: keysFile,
		WebhookURL: receiver.URL, WebhookSecret: string(hooks.secret),
		Tune: func(_ *admitter.Config, l *ledger.Config, _ *sink.Config) {
			l.Now = clock.Now
			// Wall-clock ticks would move log time to today; an hour apart, none comes.
			l.TickIntervalMs = 3_600_000
		}})

	call := func(method, path, token string, body any) (int, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequestWithContext(ctx, method, st.LedgerURL+path, rd)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	admin := func(method, path string, body any) {
		t.Helper()
		if code, b := call(method, path, st.AdminToken, body); code != http.StatusAccepted {
			t.Fatalf("%s %s: %d %s", method, path, code, b)
		}
	}
	until := func(what string, ok func(view.Account) bool) view.Account {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		var v view.Account
		for {
			code, b := call(http.MethodGet, "/v1/accounts/"+acct, st.AdminToken, nil)
			if code == http.StatusOK && json.Unmarshal(b, &v) == nil && ok(v) {
				return v
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never seen: %d %s", what, code, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// use publishes one request of cost on acct at at, as an admitter does: its start (a
	// credit hold of the cost) and its finish, each acknowledged by all replicas, stamped at.
	w := kafkax.NewWriter(st.Brokers, st.Topics.Events, kafkax.DefaultWriterConfig)
	t.Cleanup(func() { w.Close() })
	use := func(req string, cost int64, at time.Time) {
		t.Helper()
		for i, d := range []events.Data{
			events.RequestStarted{RequestID: req, AccountID: acct, Endpoint: "codex.responses", Tier: "pro", Priority: events.PriorityStandard,
				Funding: events.FundingCredits, EstimateMicros: cost, HoldMicros: cost, HoldExpiresAt: at.Add(5 * time.Minute),
				PriceBookVersion: st.Book.Version},
			events.RequestFinished{RequestID: req, AccountID: acct, Endpoint: "codex.responses", Status: events.StatusSucceeded,
				CostMicros: cost, PriceBookVersion: st.Book.Version},
		} {
			evAt := at.Add(time.Duration(i) * time.Second)
			ev, err := events.New("urn:tally:admitter/commercial-test", evAt, d)
			if err != nil {
				t.Fatal(err)
			}
			v, err := ev.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(acct), Value: v, Time: evAt}); err != nil {
				t.Fatalf("publish %s: %v", ev.Type, err)
			}
		}
	}

	// Period 1 (Jan 31 - Feb 28): the subscription (its first allocation is granted at once),
	// then the floor and auto-top-up settings (set on an empty account they would fire at once:
	// its balance is below both), 120 of the 200 allocated used.
	admin(http.MethodPut, "/v1/accounts/"+acct+"/subscription", map[string]any{"plan_id": "pro"})
	until("the first allocation", func(v view.Account) bool { return v.AvailableMicros == 200_000_000 })
	admin(http.MethodPut, "/v1/accounts/"+acct, map[string]any{"tier": "pro", "priority": "standard", "organization_id": "org-7",
		"notify_floor_micros": 50_000_000, "auto_top_up_threshold_micros": 20_000_000, "auto_top_up_amount_micros": 100_000_000})
	admin(http.MethodPut, "/v1/accounts/acct-other", map[string]any{"tier": "free", "priority": "standard", "organization_id": "org-8"})
	use("r1", 120_000_000, jan31.Add(time.Hour)) // 600 ‰ of the allocation: the 500 ‰ notice
	v := until("period 1 with 120 used", func(v view.Account) bool { return v.Period != nil && v.Period.UsedMicros == 120_000_000 })
	if v.Subscription == nil || v.Subscription.PlanID != "pro" || !v.Subscription.AnchorAt.Equal(jan31) ||
		!v.Period.Start.Equal(jan31) || !v.Period.End.Equal(feb28) || v.Period.AllocationMicros != 200_000_000 || v.AvailableMicros != 80_000_000 {
		t.Fatalf("period 1: %+v subscription %+v period %+v", v, v.Subscription, v.Period)
	}

	// Renewal 1 (Feb 28, 2026 is no leap year): 80 carried (cap 100), 200 granted; then a
	// top-up purchase of 50, sent twice as a payment provider's webhook retries it.
	use("r2", 10_000_000, feb28.Add(time.Hour))
	until("renewal 1", func(v view.Account) bool { return v.Period.Start.Equal(feb28) && v.Period.UsedMicros == 10_000_000 })
	clock.Set(feb28.Add(2 * time.Hour))
	purchase := map[string]any{"purchase_id": "pay-2026-02", "payment_ref": "psp_ch_3Nq", "amount_micros": 50_000_000}
	admin(http.MethodPost, "/v1/accounts/"+acct+"/purchases", purchase)
	admin(http.MethodPost, "/v1/accounts/"+acct+"/purchases", purchase)
	v = until("the top-up", func(v view.Account) bool { return v.AvailableMicros == 320_000_000 })
	use("r3", 175_000_000, feb28.Add(24*time.Hour)) // 185 used: 925 ‰: 500 and 800
	use("r4", 110_000_000, feb28.Add(48*time.Hour)) // 295 used: 1000; available 35 < 50: floor
	use("r5", 20_000_000, feb28.Add(72*time.Hour))  // available 15 < 20: top-up requested once
	v = until("period 2 usage", func(v view.Account) bool { return v.Period.UsedMicros == 315_000_000 })
	if v.AvailableMicros != 15_000_000 || v.Period.ByEndpoint["codex.responses"] != (view.EndpointUsage{Requests: 4, ChargedMicros: 315_000_000}) {
		t.Fatalf("period 2: available %d, period %+v", v.AvailableMicros, v.Period)
	}

	// Renewal 2 (Mar 31, the anchor day again): moved by an account update at the new time.
	clock.Set(mar31.Add(time.Hour))
	admin(http.MethodPut, "/v1/accounts/"+acct, map[string]any{"tier": "pro", "priority": "standard"})
	use("r6", 5_000_000, mar31.Add(2*time.Hour))
	v = until("renewal 2", func(v view.Account) bool { return v.Period.Start.Equal(mar31) && v.Period.UsedMicros == 5_000_000 })
	// What was left (15) stays up to the cap, the rest of February's plan grant is breakage;
	// the purchase does not expire. Whatever the split, the journal says it: available is
	// 15 + 200 - 5 - the breakage posted at the renewal.
	var ents view.Entries
	if code, b := call(http.MethodGet, "/v1/accounts/"+acct+"/entries?limit=1000", st.AdminToken, nil); code != 200 || json.Unmarshal(b, &ents) != nil {
		t.Fatalf("entries: %d %s", code, b)
	}
	breakage := int64(0)
	for _, e := range ents.Entries {
		if e.LedgerAccount == events.LedgerBreakage {
			breakage += e.AmountMicros
		}
	}
	if v.AvailableMicros != 210_000_000-breakage || v.AvailableMicros < 200_000_000-5_000_000 {
		t.Fatalf("after renewal 2: available %d, breakage %d (want 15+200-5-breakage)", v.AvailableMicros, breakage)
	}
	t.Logf("after two renewals: available %d µ, breakage %d µ, period %s..%s", v.AvailableMicros, breakage,
		v.Period.Start.Format("2006-01-02"), v.Period.End.Format("2006-01-02"))

	// The webhooks: each notification and the top-up request, signed, exactly once.
	want := []string{"balance_floor/0@02-28", "topup/100000000@15000000", "usage_threshold/1000@02-28",
		"usage_threshold/500@01-31", "usage_threshold/500@02-28", "usage_threshold/800@02-28"}
	deadline := time.Now().Add(60 * time.Second)
	for {
		kinds, repeated, bad := hooks.seen()
		if len(bad) > 0 || len(repeated) > 0 {
			t.Fatalf("webhooks: refused %v, repeated %v", bad, repeated)
		}
		if fmt.Sprint(kinds) == fmt.Sprint(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhooks received %v, want %v", kinds, want)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The customer view, with a key scoped to the account.
	code, tok, stderr := run(t, "customer-key", "-account", acct, "-file", keysFile)
	tok = strings.TrimSpace(tok)
	if code != 0 {
		t.Fatalf("customer-key: exit %d, %s", code, stderr)
	}
	var cv struct {
		AvailableMicros int64              `json:"available_micros"`
		Subscription    *view.Subscription `json:"subscription"`
		Period          *view.Period       `json:"period"`
		Limits          any                `json:"limits"`
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, b := call(http.MethodGet, "/v1/customer/accounts/"+acct, tok, nil)
		if code == http.StatusOK {
			if err := json.Unmarshal(b, &cv); err != nil {
				t.Fatalf("customer view: %v %s", err, b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("customer view: %d %s", code, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if cv.AvailableMicros != v.AvailableMicros || cv.Subscription == nil || cv.Subscription.PlanID != "pro" ||
		cv.Period == nil || !cv.Period.Start.Equal(mar31) || cv.Limits != nil {
		t.Fatalf("customer view: %+v (ledger available %d)", cv, v.AvailableMicros)
	}
	var usage struct {
		Period *view.Period `json:"period"`
	}
	if code, b := call(http.MethodGet, "/v1/customer/accounts/"+acct+"/usage", tok, nil); code != 200 || json.Unmarshal(b, &usage) != nil ||
		usage.Period == nil || usage.Period.ByEndpoint["codex.responses"] != (view.EndpointUsage{Requests: 1, ChargedMicros: 5_000_000}) {
		t.Fatalf("customer usage: %d %s", code, b)
	}
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/v1/customer/accounts/acct-other"}, // another account
		{http.MethodGet, "/v1/accounts/" + acct},             // an admin route
		{http.MethodGet, "/v1/accounts/" + acct + "/entries"},
	} {
		if code, b := call(c.method, c.path, tok, nil); code != http.StatusForbidden && code != http.StatusUnauthorized {
			t.Errorf("customer key on %s %s: %d %s, want 401 or 403", c.method, c.path, code, b)
		}
	}

	// An organisation key reads its member account, not another organisation's.
	code, orgTok, stderr := run(t, "customer-key", "-org", "org-7", "-file", keysFile)
	orgTok = strings.TrimSpace(orgTok)
	if code != 0 {
		t.Fatalf("customer-key -org: exit %d, %s", code, stderr)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, b := call(http.MethodGet, "/v1/customer/accounts/"+acct, orgTok, nil)
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("org key on its member: %d %s", code, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, b := call(http.MethodGet, "/v1/customer/accounts/acct-other", orgTok, nil); code != http.StatusForbidden {
		t.Fatalf("org key on another organisation's account: %d %s, want 403", code, b)
	}

	// Reconcile: the replay of the events topic, the live ledger and ClickHouse agree.
	deadline = time.Now().Add(90 * time.Second)
	for {
		code, out, stderr := run(t, "reconcile")
		if code == 0 {
			t.Logf("reconcile: %s", strings.TrimSpace(out))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reconcile: exit %d\n%s\n%s", code, out, stderr)
		}
		time.Sleep(time.Second)
	}
	// Nothing was delivered twice while the rest ran.
	if _, repeated, bad := hooks.seen(); len(repeated) > 0 || len(bad) > 0 {
		t.Fatalf("webhooks: refused %v, repeated %v", bad, repeated)
	}
}
