//go:build chaos

package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/shared/events"
)

// Scenario 6 settings.
const (
	admittersN         = 3
	callersPerAdmitter = 3
	// creditGrantMicros and codeHoldMicros: 13 holds of 7,500 µ are fundable from 100,000 µ.
	creditGrantMicros = 100_000
	codeHoldMicros    = 7_500
	// measureAccounts is how many accounts each measurement is repeated on.
	measureAccounts = 4
)

// burst fires callers goroutines, each bound to one admitter, that admit (never finish)
// until each has been denied deny times in a row; it returns the allowed count.
func burst(ctx context.Context, clients []*client.Client, acct, endpoint string, est events.Units, prefix string, finish bool) (allowed int64, reasons map[string]int64) {
	var n atomic.Int64
	var mu sync.Mutex
	reasons = map[string]int64{}
	var wg sync.WaitGroup
	for c := 0; c < len(clients)*callersPerAdmitter; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := clients[c%len(clients)]
			denials := 0
			for i := 0; denials < 3 && i < 200 && ctx.Err() == nil; i++ {
				rid := fmt.Sprintf("%s-%d-%d", prefix, c, i)
				_, err := cl.Admit(ctx, api.AdmitRequest{RequestID: rid, AccountID: acct, Endpoint: endpoint, Estimate: est})
				var d *client.DeniedError
				switch {
				case errors.As(err, &d):
					denials++
					mu.Lock()
					reasons[string(d.Reason)]++
					mu.Unlock()
				case err != nil:
					mu.Lock()
					reasons["error: "+err.Error()]++
					mu.Unlock()
					return
				default:
					n.Add(1)
					if finish {
						_, _ = cl.Finish(ctx, api.FinishRequest{RequestID: rid, Status: events.StatusSucceeded, Usage: est, DurationMs: 10})
					}
				}
			}
		}()
	}
	wg.Wait()
	return n.Load(), reasons
}

// TestSeveralAdmitters is scenario 6: three admitters share accounts under load (a
// background workload through all three). Over-admission against concurrency, rate and
// credit limits is measured and checked against the bound the admitter's README documents:
// concurrency and rate at most limit + N − 1; credit holds at most 2 × (N − 1) × callers
// per admitter over the fundable count. The ledger stays exact (checked as in scenario 1).
func TestSeveralAdmitters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h := NewHarness(t)
	led := h.Ledger()
	var adms []*Proc
	for i := 1; i <= admittersN; i++ {
		adms = append(adms, h.Admitter(fmt.Sprintf("m%d", i), admittersN))
	}
	// Background load through all three admitters.
	w := &Workload{H: h, Name: "s6", Seed: seed() + 6, Mix: DefaultMix, Workers: 12, Admitters: adms, Ledger: led}
	if err := w.Setup(ctx, 12); err != nil {
		t.Fatal(err)
	}
	httpc := &http.Client{Timeout: 5 * time.Second}
	var clients []*client.Client
	for _, a := range adms {
		c, err := client.New(client.Config{BaseURL: "http://" + a.Addr, APIKey: h.APIKey, HTTPClient: httpc, AttemptsMax: 1})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	// Measured accounts: "pro" with 100,000 µ (credits), "team" with plenty (concurrency, rate).
	var credit, team []string
	for i := 0; i < measureAccounts; i++ {
		credit = append(credit, fmt.Sprintf("acct-s6-credit-%d", i))
		team = append(team, fmt.Sprintf("acct-s6-team-%d", i), fmt.Sprintf("acct-s6-rate-%d", i))
	}
	for _, a := range credit {
		mustAdmin(t, ctx, h, led, http.MethodPut, "/v1/accounts/"+a, map[string]any{"tier": "pro", "priority": "standard"})
		mustAdmin(t, ctx, h, led, http.MethodPost, "/v1/accounts/"+a+"/grants", map[string]any{"grant_id": "g-" + a, "amount_micros": creditGrantMicros, "source": "purchase", "priority": 1})
	}
	for _, a := range team {
		mustAdmin(t, ctx, h, led, http.MethodPut, "/v1/accounts/"+a, map[string]any{"tier": "team", "priority": "standard"})
		mustAdmin(t, ctx, h, led, http.MethodPost, "/v1/accounts/"+a+"/grants", map[string]any{"grant_id": "g-" + a, "amount_micros": 1_000_000_000, "source": "purchase", "priority": 1})
	}
	// Every admitter must see the balances and tiers before measuring (each has its own view).
	probe := events.Units{TokensIn: 1, TokensOut: 1}
	for _, a := range append(append([]string{}, credit...), team...) {
		for i, c := range clients {
			if err := eventually(ctx, 60*time.Second, func() error {
				r, err := c.Admit(ctx, api.AdmitRequest{RequestID: fmt.Sprintf("probe-%s-%d-%d", a, i, time.Now().UnixNano()), AccountID: a,
					Endpoint: "codex.responses", Estimate: probe})
				if err != nil {
					return err
				}
				_, _ = c.Finish(ctx, api.FinishRequest{RequestID: r.RequestID, Status: events.StatusCancelled})
				if r.Tier != "pro" && r.Tier != "team" {
					return fmt.Errorf("tier %s not seen yet", r.Tier)
				}
				return nil
			}); err != nil {
				t.Fatalf("admitter %d never saw %s: %v", i, a, err)
			}
		}
	}
	// Let the ledger fold the probes' settlements so the views are current.
	time.Sleep(2 * time.Second)
	wctx, wstop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()

	est := events.Units{TokensIn: 1000, TokensOut: 1000} // 7,500 µ
	fundable := int64(creditGrantMicros / codeHoldMicros)
	// The probes cost 0 (cancelled), so the whole grant is available.
	creditBound := int64(2 * (admittersN - 1) * callersPerAdmitter)
	var creditOver []int64
	for i, a := range credit {
		got, reasons := burst(ctx, clients, a, "codex.responses", est, fmt.Sprintf("c%d", i), false)
		creditOver = append(creditOver, got-fundable)
		t.Logf("credits %s: %d holds allowed of %d fundable; denials %v", a, got, fundable, reasons)
		if got-fundable > creditBound {
			t.Errorf("credits %s: %d holds over the fundable %d, bound %d", a, got-fundable, fundable, creditBound)
		}
	}
	// Concurrency: team max_concurrent 6, holds never finished.
	const concLimit = 6
	var concGot []int64
	for i := 0; i < measureAccounts; i++ {
		a := team[2*i]
		got, reasons := burst(ctx, clients, a, "codex.responses", est, fmt.Sprintf("k%d", i), false)
		concGot = append(concGot, got)
		t.Logf("concurrency %s: %d in flight allowed, limit %d; denials %v", a, got, concLimit, reasons)
		if got > concLimit+admittersN-1 {
			t.Errorf("concurrency %s: %d allowed, bound %d", a, got, concLimit+admittersN-1)
		}
	}
	// Rate: team burst 6 (× 1.5 clean-history bonus = 9) at 120/min, finished at once.
	const rateBurst = 9
	var rateGot []int64
	for i := 0; i < measureAccounts; i++ {
		a := team[2*i+1]
		t0 := time.Now()
		got, reasons := burst(ctx, clients, a, "codex.responses", est, fmt.Sprintf("q%d", i), true)
		el := time.Since(t0)
		limit := rateBurst + int64(el.Seconds()*120/60+0.999)
		rateGot = append(rateGot, got)
		t.Logf("rate %s: %d allowed in %s, limit %d (burst %d + 2/s); denials %v", a, got, el.Round(time.Millisecond), limit, rateBurst, reasons)
		if got > limit+admittersN-1 {
			t.Errorf("rate %s: %d allowed in %s, bound %d", a, got, el, limit+admittersN-1)
		}
	}
	wstop()
	<-done
	s := Summary{Scenario: "6 three admitters", Faults: fmt.Sprintf("%d admitters, %d callers each, background load", admittersN, callersPerAdmitter),
		OverAdmission: fmt.Sprintf("credit holds over fundable %v (bound %d); concurrency allowed %v (limit %d, bound %d); rate allowed %v (burst %d + 2/s, bound +%d)",
			creditOver, creditBound, concGot, concLimit, concLimit+admittersN-1, rateGot, rateBurst, admittersN-1)}
	ref := Verify(t, ctx, h, w.Rec, VerifyOptions{Ledger: led}, &s)
	var overage int64
	for _, a := range credit {
		overage += ref.Balances[a].OverageMicros
		if b := ref.Balances[a]; b.AvailableMicros < 0 {
			t.Errorf("%s: negative available %d", a, b.AvailableMicros)
		}
	}
	s.Notes = append(s.Notes, fmt.Sprintf("credit accounts after expiry: overage %d µ in all (over-admitted holds are capped by the ledger to the available balance and released on expiry)", overage),
		errorsLine(w.Rec))
	Report(t, s)
}

func mustAdmin(t *testing.T, ctx context.Context, h *Harness, led *Proc, method, path string, body any) {
	t.Helper()
	code, err := h.Admin(ctx, led.Addr, method, path, body, nil)
	if err != nil || code != http.StatusAccepted {
		t.Fatalf("%s %s: %d %v", method, path, code, err)
	}
}
