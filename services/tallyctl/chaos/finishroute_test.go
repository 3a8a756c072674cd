//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// finishHoldTimeoutMs is codex.responses' hold timeout in TestFinishElsewhere: long enough
// that no hold expires while an admitter restarts (the suite's 2 s would expire them).
const finishHoldTimeoutMs = 120_000

// TestFinishElsewhere is scenario 10: a finish is charged whichever admitter gets it. Two admitters
// (ADMITTER_INSTANCES=2) and the ledger run. (a) a1 admits requests, is SIGKILLed with them
// in flight and restarted (same instance id); their finishes, sent to the new a1, are charged.
// (b) a1 admits, a2 gets the finishes; a1 frees its in-flight slots when it reads them.
// (c) a2 admits and is SIGKILLed; a1 gets the finishes. Repeats of every finish at the other
// admitter are answered without a second charge. The ledger's balance must show exactly one
// charge per request and no hold left.
func TestFinishElsewhere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	h := NewHarness(t)
	// Long holds on codex.responses for this scenario (the ledger and both admitters read it).
	book := strings.Replace(chaosBook, `"hold_timeout_ms": 2000`, fmt.Sprintf(`"hold_timeout_ms": %d`, finishHoldTimeoutMs), 1)
	if err := os.WriteFile(h.BookPath, []byte(book), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := pricebook.Load(h.BookPath)
	if err != nil {
		t.Fatal(err)
	}
	lc := h.ledgerConfig()
	h.Book, h.FoldConfig = b, lc.FoldConfig(b)

	led := h.Ledger()
	a1 := h.Admitter("f1", 2)
	a2 := h.Admitter("f2", 2)
	const acct = "acct-finish-elsewhere"
	const grant = 100_000_000
	mustAdmin(t, ctx, h, led, http.MethodPut, "/v1/accounts/"+acct, map[string]any{"tier": "pro", "priority": "standard"})
	mustAdmin(t, ctx, h, led, http.MethodPost, "/v1/accounts/"+acct+"/grants", map[string]any{"grant_id": "g-" + acct, "amount_micros": grant, "source": "purchase", "priority": 1})
	httpc := &http.Client{Timeout: 10 * time.Second}
	clientOf := func(p *Proc) *client.Client {
		c, err := client.New(client.Config{BaseURL: "http://" + p.Addr, APIKey: h.APIKey, HTTPClient: httpc, AttemptsMax: 10, RetryBackoff: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c1, c2 := clientOf(a1), clientOf(a2)
	est := events.Units{TokensIn: 1000, TokensOut: 1000} // hold 7,500 µ
	use := events.Units{TokensIn: 2000, TokensOut: 1000} // cost 9,000 µ
	const cost = 9_000
	for i, c := range []*client.Client{c1, c2} { // both admitters see the account on credits
		if err := eventually(ctx, 60*time.Second, func() error {
			r, err := c.Admit(ctx, api.AdmitRequest{RequestID: fmt.Sprintf("probe-%d-%d", i, time.Now().UnixNano()), AccountID: acct, Endpoint: "codex.responses", Estimate: est})
			if err != nil {
				return err
			}
			if _, err := c.Finish(ctx, api.FinishRequest{RequestID: r.RequestID, Status: events.StatusCancelled}); err != nil {
				return err
			}
			if r.Funding != "credits" {
				return fmt.Errorf("funding %s", r.Funding)
			}
			return nil
		}); err != nil {
			t.Fatalf("admitter %d never saw %s: %v", i+1, acct, err)
		}
	}
	admit := func(c *client.Client, prefix string, n int) []string {
		var ids []string
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("%s-%d", prefix, i)
			r, err := c.Admit(ctx, api.AdmitRequest{RequestID: id, AccountID: acct, Endpoint: "codex.responses", Estimate: est})
			if err != nil || !r.Allowed {
				t.Fatalf("admit %s: %+v %v", id, r, err)
			}
			ids = append(ids, id)
		}
		return ids
	}
	finish := func(c *client.Client, ids []string, where string) {
		for _, id := range ids {
			r, err := c.Finish(ctx, api.FinishRequest{RequestID: id, Status: events.StatusSucceeded, Usage: use, DurationMs: 100})
			if err != nil || r.CostMicros != cost || r.ChargedMicros != cost {
				t.Fatalf("finish %s at %s: %+v %v", id, where, r, err)
			}
		}
	}
	var charged int64
	// (a) SIGKILL with requests in flight, finishes to the restarted admitter.
	ra := admit(c1, "fa", 20)
	a1.Kill()
	h.StartReady(a1)
	finish(c1, ra, "restarted a1")
	charged += int64(len(ra)) * cost
	// (b) admitted by a1, finished at a2; a1 frees its slots when it reads the finishes.
	rb := admit(c1, "fb", 10)
	finish(c2, rb, "a2")
	charged += int64(len(rb)) * cost
	if err := eventually(ctx, 30*time.Second, func() error {
		if v := gauge(ctx, a1, "tally_admitter_inflight_requests"); v != "0" {
			return fmt.Errorf("a1 in flight %s", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// (c) admitted by a2, which is SIGKILLed; finished at a1.
	rc := admit(c2, "fc", 10)
	a2.Kill()
	finish(c1, rc, "a1 (a2 dead)")
	charged += int64(len(rc)) * cost
	h.StartReady(a2)
	// Repeats at the other admitter: same answer, no second charge.
	finish(c1, rb, "a1 (repeat)")
	finish(c2, ra, "restarted a2 (repeat)")

	want := int64(grant) - charged
	var acc view.Account
	if err := eventually(ctx, settleTimeout, func() error {
		if _, err := h.Admin(ctx, led.Addr, http.MethodGet, "/v1/accounts/"+acct, nil, &acc); err != nil {
			return err
		}
		if acc.AvailableMicros != want || acc.HeldMicros != 0 || acc.OpenHolds != 0 || acc.OverageMicros != 0 {
			return fmt.Errorf("ledger: available %d held %d open %d overage %d; want available %d, nothing held",
				acc.AvailableMicros, acc.HeldMicros, acc.OpenHolds, acc.OverageMicros, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Stable: no late double charge.
	time.Sleep(2 * time.Second)
	if _, err := h.Admin(ctx, led.Addr, http.MethodGet, "/v1/accounts/"+acct, nil, &acc); err != nil || acc.AvailableMicros != want {
		t.Fatalf("ledger moved: available %d, want %d (%v)", acc.AvailableMicros, want, err)
	}
	t.Logf("%d requests finished away from their admitting process, %d µ charged; ledger available %d µ, held %d, open holds %d",
		len(ra)+len(rb)+len(rc), charged, acc.AvailableMicros, acc.HeldMicros, acc.OpenHolds)
	Report(t, Summary{Scenario: "10 finish elsewhere", Faults: "admitter SIGKILL between admit and finish (×2), finishes at the other admitter",
		OverAdmission: "n/a", Notes: []string{fmt.Sprintf("%d finishes charged once each (%d µ); repeats at the other admitter charged nothing", len(ra)+len(rb)+len(rc), charged)}})
}

// gauge reads one unlabelled metric of a service's /metrics.
func gauge(ctx context.Context, p *Proc, name string) string {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Addr+"/metrics", nil)
	resp, err := adminClient.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return "missing"
}
