//go:build chaos

package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// Scenarios 7 and 8: overload. 7: the adaptive limit
// must not lock up (a latency shift, finishes without duration_ms, a cut with nothing
// finishing afterwards). 8: one client's admits that are never finished must not shut the
// endpoint: one account gets its share, critical keeps its reserve.

// overloadBook rewrites the suite's price book before any service starts: mut edits the
// parsed JSON. It adds "wide", a tier whose own limits never bind.
func overloadBook(t *testing.T, h *Harness, mut func(endpoints map[string]map[string]any)) {
	t.Helper()
	var b map[string]any
	if err := json.Unmarshal([]byte(chaosBook), &b); err != nil {
		t.Fatal(err)
	}
	b["version"] = "chaos-overload-1"
	b["tiers"].(map[string]any)["wide"] = map[string]any{"rate_per_minute": 1_000_000, "burst": 100_000,
		"max_concurrent": 100_000, "allowance": []any{}}
	eps := map[string]map[string]any{}
	for name, e := range b["endpoints"].(map[string]any) {
		eps[name] = e.(map[string]any)
	}
	mut(eps)
	raw, _ := json.Marshal(b)
	if err := os.WriteFile(h.BookPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	book, err := pricebook.Load(h.BookPath)
	if err != nil {
		t.Fatalf("overload price book: %v", err)
	}
	h.Book = book
	h.FoldConfig = h.ledgerConfig().FoldConfig(book)
}

// driver makes single admit and finish calls and records every acknowledged answer.
type driver struct {
	h   *Harness
	cl  *client.Client
	rec *Record
}

func newDriver(t *testing.T, h *Harness, adm *Proc) *driver {
	httpc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	cl, err := client.New(client.Config{BaseURL: "http://" + adm.Addr, APIKey: h.APIKey, HTTPClient: httpc, AttemptsMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	return &driver{h: h, cl: cl, rec: NewRecord()}
}

// account creates id with tier and class through the ledger's admin API, with a grant.
func (d *driver) account(ctx context.Context, led *Proc, id, tier, prio string, grantMicros int64) error {
	var acc struct {
		EventID string `json:"event_id"`
	}
	code, err := d.h.Admin(ctx, led.Addr, http.MethodPut, "/v1/accounts/"+id, map[string]any{"tier": tier, "priority": prio}, &acc)
	if err != nil || code != http.StatusAccepted {
		return fmt.Errorf("account %s: %d %v", id, code, err)
	}
	d.rec.mu.Lock()
	d.rec.Updates[acc.EventID] = id
	d.rec.mu.Unlock()
	d.rec.acked.Add(1)
	code, err = d.h.Admin(ctx, led.Addr, http.MethodPost, "/v1/accounts/"+id+"/grants",
		map[string]any{"grant_id": "g-init-" + id, "amount_micros": grantMicros, "source": "purchase", "priority": 100}, &acc)
	if err != nil || code != http.StatusAccepted {
		return fmt.Errorf("grant %s: %d %v", id, code, err)
	}
	d.rec.mu.Lock()
	d.rec.Grants[acc.EventID] = id
	d.rec.mu.Unlock()
	d.rec.acked.Add(1)
	return nil
}

// ready waits until the ledger has folded the grant of the last account and the admitter
// has had time to read its balance.updated (followed with a 50 ms fetch wait).
func (d *driver) ready(ctx context.Context, led *Proc, last string) error {
	err := eventually(ctx, 60*time.Second, func() error {
		var v struct {
			AvailableMicros int64 `json:"available_micros"`
		}
		code, err := d.h.Admin(ctx, led.Addr, http.MethodGet, "/v1/accounts/"+last, nil, &v)
		if err != nil || code != http.StatusOK || v.AvailableMicros == 0 {
			return fmt.Errorf("ledger has not folded %s's grant yet (%d, %v)", last, code, err)
		}
		return nil
	})
	time.Sleep(time.Second)
	return err
}

// admit asks once; it returns the answer (allowed or denied) or nil after an error.
func (d *driver) admit(ctx context.Context, req api.AdmitRequest, abandon bool) *api.AdmitResponse {
	d.rec.attempts.Add(1)
	resp, err := d.cl.Admit(ctx, req)
	var denied *client.DeniedError
	switch {
	case errors.As(err, &denied):
		d.rec.mu.Lock()
		d.rec.Denied[req.RequestID] = string(denied.Reason)
		d.rec.mu.Unlock()
		d.rec.acked.Add(1)
		return denied.Response
	case err != nil:
		if ctx.Err() == nil {
			d.rec.errorf("admit", err)
		}
		return nil
	}
	now := time.Now()
	d.rec.mu.Lock()
	d.rec.Allowed[req.RequestID] = AdmitRec{Account: req.AccountID, Endpoint: req.Endpoint, Funding: resp.Funding, HoldMicros: resp.HoldMicros, At: now}
	d.rec.LastAllowed = now
	if abandon {
		d.rec.Abandoned[req.RequestID] = true
	}
	d.rec.mu.Unlock()
	d.rec.acked.Add(1)
	return resp
}

func (d *driver) finish(ctx context.Context, f api.FinishRequest) {
	d.rec.attempts.Add(1)
	fr, err := d.cl.Finish(ctx, f)
	if err != nil {
		if ctx.Err() == nil {
			d.rec.errorf("finish", err)
		}
		d.rec.mu.Lock()
		d.rec.Unsettled[f.RequestID] = true
		d.rec.mu.Unlock()
		return
	}
	d.rec.mu.Lock()
	d.rec.Finished[f.RequestID] = fr.CostMicros
	d.rec.mu.Unlock()
	d.rec.acked.Add(1)
}

// tally counts answers by outcome ("allowed" or the denial reason), safe for concurrent use.
type tally struct {
	mu sync.Mutex
	n  map[string]int64
}

func (c *tally) add(k string) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int64{}
	}
	c.n[k]++
	c.mu.Unlock()
}

func (c *tally) get(k string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

func (c *tally) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var parts []string
	for k, v := range c.n {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ", ") + "}"
}

func outcome(a *api.AdmitResponse) string {
	switch {
	case a == nil:
		return "error"
	case a.Allowed:
		return "allowed"
	}
	return a.Reason
}

var video1s = events.Units{VideoSeconds: 1, Resolution: "480p"}

// TestAdaptiveLimitRecovers is scenario 7. sora.video has capacity 256 here
// and the admitter adapts every 10 finishes. Requests that run 20 ms, finished without
// duration_ms, then requests that run 80 ms and say so (the 2 s → 8 s shift, scaled): the
// limit may back off, but never below the floor (25), and no standard request is shed. Then
// failed requests cut the limit, nothing finishes any more (the probes that watch the limit
// are abandoned: their holds expire), and it must grow back to 256 by itself.
func TestAdaptiveLimitRecovers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h := NewHarness(t)
	overloadBook(t, h, func(eps map[string]map[string]any) {
		eps["sora.video"]["capacity_inflight"] = 256
		eps["sora.video"]["critical_reserve_permille"] = 200
	})
	led := h.Ledger()
	snk := h.Sink()
	adm := h.Admitter("a1", 1, "ADMITTER_ADAPTIVE_WINDOW_SAMPLES=10", "ADMITTER_ADAPTIVE_RECOVERY_MS=500")
	d := newDriver(t, h, adm)
	var accts []string
	for i := 0; i < 10; i++ {
		accts = append(accts, fmt.Sprintf("acct-s7-w%d", i))
	}
	accts = append(accts, "acct-s7-probe")
	for _, a := range accts {
		if err := d.account(ctx, led, a, "wide", events.PriorityStandard, 1_000_000_000_000); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.ready(ctx, led, accts[len(accts)-1]); err != nil {
		t.Fatal(err)
	}
	var seen tally
	var minCap atomic.Int64
	minCap.Store(1 << 40)
	// window runs 10 requests at once (one per account), each for run, then finishes them.
	window := func(name string, run time.Duration, status string, withDuration func(i int) bool) {
		ids := make([]string, 0, 10)
		for i := 0; i < 10; i++ {
			rid := fmt.Sprintf("r-s7-%s-%d", name, i)
			a := d.admit(ctx, api.AdmitRequest{RequestID: rid, AccountID: accts[i], Endpoint: "sora.video", Estimate: video1s}, false)
			seen.add(outcome(a))
			if a != nil {
				if a.Remaining.EndpointCapacity < minCap.Load() {
					minCap.Store(a.Remaining.EndpointCapacity)
				}
				if a.Allowed {
					ids = append(ids, rid)
				}
			}
		}
		time.Sleep(run)
		var wg sync.WaitGroup
		for i, rid := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f := api.FinishRequest{RequestID: rid, Status: status, Usage: video1s}
				if withDuration(i) {
					f.DurationMs = run.Milliseconds()
				}
				d.finish(ctx, f)
			}()
		}
		wg.Wait()
	}
	always := func(int) bool { return true }
	for i := 0; i < 3; i++ {
		window(fmt.Sprint("fast", i), 20*time.Millisecond, events.StatusSucceeded, func(int) bool { return false })
	}
	for i := 0; i < 20; i++ {
		window(fmt.Sprint("slow", i), 80*time.Millisecond, events.StatusSucceeded, always)
	}
	shiftSeen, shiftMin := seen.String(), minCap.Load()
	if shiftMin < 25 || seen.get("allowed") != 230 {
		t.Errorf("latency shift: capacity fell to %d (floor 25), answers %s (want all 230 allowed)", shiftMin, shiftSeen)
	}
	// Failures cut the limit; then nothing finishes.
	for i := 0; i < 10; i++ {
		window(fmt.Sprint("fail", i), 0, events.StatusFailed, always)
	}
	cutTo := minCap.Load()
	if cutTo >= 256*800/1000 {
		t.Errorf("10 failed windows did not cut the limit: lowest capacity %d", cutTo)
	}
	quietFrom := time.Now()
	var probes atomic.Int64
	var capNow int64
	err := eventually(ctx, 90*time.Second, func() error {
		// Abandoned (never finished, expired after 3 s), from rotating accounts so that no
		// account reaches its share of a small limit.
		n := probes.Add(1)
		rid := fmt.Sprintf("r-s7-probe-%d", n)
		a := d.admit(ctx, api.AdmitRequest{RequestID: rid, AccountID: accts[n%int64(len(accts))], Endpoint: "sora.video", Estimate: video1s}, true)
		if a == nil {
			return errors.New("probe: no answer")
		}
		capNow = a.Remaining.EndpointCapacity
		if capNow != 256 || !a.Allowed {
			return fmt.Errorf("capacity %d, %s", capNow, outcome(a))
		}
		return nil
	})
	recovered := time.Since(quietFrom)
	if err != nil {
		t.Errorf("no finishes after the cut: the limit did not grow back to 256 within 90 s: %v", err)
	}
	s := Summary{Scenario: "7 adaptive limit: latency shift, no duration_ms, no finishes", OverAdmission: "n/a (single admitter)",
		Faults: "30 requests of 20 ms finished without duration_ms, then 200 of 80 ms, then 100 failed requests and silence"}
	Verify(t, ctx, h, d.rec, VerifyOptions{Ledger: led, Sink: true}, &s)
	s.Notes = append(s.Notes,
		fmt.Sprintf("latency shift: lowest endpoint capacity %d of 256 (floor 25); answers %s", shiftMin, shiftSeen),
		fmt.Sprintf("after the failures: capacity %d; %s (%d probes, abandoned)", cutTo, recoveredNote(err, recovered, capNow), probes.Load()),
		errorsLine(d.rec))
	for _, p := range []*Proc{led, snk, adm} {
		if !p.Running() {
			t.Errorf("%s stopped\n%s", p.Name, p.Tail(30))
		}
	}
	Report(t, s)
}

// TestAbandonedHoldsKeepEndpointOpen is scenario 8. codex.responses has
// capacity 1024 (critical reserve 100 ‰) here. Phase 1: one account admits as fast as it
// can for 4 s and never finishes; it must get no more than its share (102), and four other
// accounts and a critical one are never denied. Phase 2: the client floods from eight
// accounts (the endpoint fills: standard may be shed) while another critical account's
// failures shrink the adaptive limit below the open holds; critical is never shed. Phase 3:
// the holds expire and standard is admitted again. Money is checked as in scenario 1.
func TestAbandonedHoldsKeepEndpointOpen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h := NewHarness(t)
	overloadBook(t, h, func(eps map[string]map[string]any) {
		eps["codex.responses"]["capacity_inflight"] = 1024
	})
	led := h.Ledger()
	snk := h.Sink()
	adm := h.Admitter("a1", 1, "ADMITTER_ADAPTIVE_WINDOW_SAMPLES=10")
	d := newDriver(t, h, adm)
	const share = 1024 * 100 / 1000 // ADMITTER_ACCOUNT_SHARE_PERMILLE default
	type acct struct{ id, prio string }
	var all []acct
	var floods, others []string
	for i := 0; i < 8; i++ {
		floods = append(floods, fmt.Sprintf("acct-s8-flood%d", i))
		all = append(all, acct{floods[i], events.PriorityStandard})
	}
	for i := 0; i < 4; i++ {
		others = append(others, fmt.Sprintf("acct-s8-std%d", i))
		all = append(all, acct{others[i], events.PriorityStandard})
	}
	all = append(all, acct{"acct-s8-crit", events.PriorityCritical}, acct{"acct-s8-failing", events.PriorityCritical})
	for _, a := range all {
		if err := d.account(ctx, led, a.id, "wide", a.prio, 1_000_000_000_000); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.ready(ctx, led, all[len(all)-1].id); err != nil {
		t.Fatal(err)
	}
	code := events.Units{TokensIn: 1000, TokensOut: 1000}
	var seq atomic.Int64
	rid := func(p string) string { return fmt.Sprintf("r-s8-%s-%d", p, seq.Add(1)) }

	// flood admits for account a with n goroutines until stop, never finishing.
	var floodSeen tally
	var floodMaxInFlight, floodMaxLimit atomic.Int64
	flood := func(stop context.Context, a string, n int, wg *sync.WaitGroup) {
		for g := 0; g < n; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for stop.Err() == nil {
					r := d.admit(ctx, api.AdmitRequest{RequestID: rid("flood"), AccountID: a, Endpoint: "codex.responses", Estimate: code}, true)
					floodSeen.add(outcome(r))
					if r == nil {
						continue
					}
					if r.Allowed && r.Remaining.InFlight > floodMaxInFlight.Load() {
						floodMaxInFlight.Store(r.Remaining.InFlight)
					}
					if !r.Allowed && r.Reason == api.ReasonConcurrencyLimited && r.Remaining.ConcurrencyLimit > floodMaxLimit.Load() {
						floodMaxLimit.Store(r.Remaining.ConcurrencyLimit)
					}
				}
			}()
		}
	}
	// user runs admit → finish for account a until stop, counting answers in seen.
	var minCap atomic.Int64
	minCap.Store(1 << 40)
	user := func(stop context.Context, a string, seen *tally, wg *sync.WaitGroup) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for stop.Err() == nil {
				id := rid("user")
				r := d.admit(ctx, api.AdmitRequest{RequestID: id, AccountID: a, Endpoint: "codex.responses", Estimate: code}, false)
				seen.add(outcome(r))
				if r == nil {
					continue
				}
				if r.Remaining.EndpointCapacity < minCap.Load() {
					minCap.Store(r.Remaining.EndpointCapacity)
				}
				if !r.Allowed {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				time.Sleep(5 * time.Millisecond)
				d.finish(ctx, api.FinishRequest{RequestID: id, Status: events.StatusSucceeded, Usage: code, DurationMs: 5})
			}
		}()
	}

	// Phase 1: one account floods.
	var std1, crit1 tally
	p1, stop1 := context.WithTimeout(ctx, 4*time.Second)
	var wg sync.WaitGroup
	flood(p1, floods[0], 8, &wg)
	for _, a := range others {
		user(p1, a, &std1, &wg)
	}
	user(p1, "acct-s8-crit", &crit1, &wg)
	wg.Wait()
	stop1()
	phase1 := fmt.Sprintf("phase 1 (one account floods 4 s): flood %s, its most in flight %d (share %d); standard others %s; critical %s",
		floodSeen.String(), floodMaxInFlight.Load(), share, std1.String(), crit1.String())
	if floodSeen.get("allowed") < share || floodMaxInFlight.Load() > share || floodMaxLimit.Load() > share {
		t.Errorf("one account was not held to its share: %s", phase1)
	}
	if std1.get("allowed") == 0 || std1.get("allowed") != sum(&std1) || crit1.get("allowed") == 0 || crit1.get("allowed") != sum(&crit1) {
		t.Errorf("others were denied while one account flooded: %s", phase1)
	}
	time.Sleep(3 * time.Second) // the flood's holds expire (hold_timeout_ms 2000)

	// Phase 2: eight accounts flood; failures cut the adaptive limit meanwhile.
	var std2, crit2, fail2 tally
	minCap.Store(1 << 40)
	p2, stop2 := context.WithTimeout(ctx, 6*time.Second)
	for _, a := range floods {
		flood(p2, a, 2, &wg)
	}
	for _, a := range others {
		user(p2, a, &std2, &wg)
	}
	user(p2, "acct-s8-crit", &crit2, &wg)
	time.Sleep(1500 * time.Millisecond)
	for i := 0; i < 30; i++ {
		id := rid("fail")
		r := d.admit(ctx, api.AdmitRequest{RequestID: id, AccountID: "acct-s8-failing", Endpoint: "codex.responses", Estimate: code}, false)
		fail2.add(outcome(r))
		if r != nil && r.Allowed {
			d.finish(ctx, api.FinishRequest{RequestID: id, Status: events.StatusFailed, Usage: events.Units{TokensIn: 10}})
		}
	}
	wg.Wait()
	stop2()
	phase2 := fmt.Sprintf("phase 2 (eight accounts flood 6 s, 30 failures): flood %s; standard others %s; critical %s; failing critical %s; lowest capacity %d of 1024",
		floodSeen.String(), std2.String(), crit2.String(), fail2.String(), minCap.Load())
	if crit2.get("allowed") == 0 || crit2.get("allowed") != sum(&crit2) || fail2.get("allowed") != 30 {
		t.Errorf("critical was denied while others' holds filled the endpoint: %s", phase2)
	}

	// Phase 3: the holds expire; standard is admitted again.
	time.Sleep(3 * time.Second)
	if err := h.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	var back time.Duration
	t3 := time.Now()
	err := eventually(ctx, 60*time.Second, func() error {
		id := rid("after")
		r := d.admit(ctx, api.AdmitRequest{RequestID: id, AccountID: others[0], Endpoint: "codex.responses", Estimate: code}, false)
		if r == nil || !r.Allowed {
			return fmt.Errorf("standard after the flood: %s", outcome(r))
		}
		d.finish(ctx, api.FinishRequest{RequestID: id, Status: events.StatusSucceeded, Usage: code, DurationMs: 5})
		back = time.Since(t3)
		return nil
	})
	if err != nil {
		t.Errorf("the endpoint did not reopen for standard within 60 s after the flood's holds expired: %v", err)
	}
	s := Summary{Scenario: "8 abandoned holds: account share, critical reserve", OverAdmission: "n/a (single admitter)",
		Faults: "admits never finished: one account for 4 s, then eight accounts for 6 s with 30 failures"}
	Verify(t, ctx, h, d.rec, VerifyOptions{Ledger: led, Sink: true}, &s)
	s.Notes = append(s.Notes, phase1, phase2, fmt.Sprintf("phase 3: standard admitted again %s after the check started (3 s after the flood)", back.Round(10*time.Millisecond)),
		errorsLine(d.rec))
	for _, p := range []*Proc{led, snk, adm} {
		if !p.Running() {
			t.Errorf("%s stopped\n%s", p.Name, p.Tail(30))
		}
	}
	Report(t, s)
}

func recoveredNote(err error, d time.Duration, capNow int64) string {
	if err != nil {
		return fmt.Sprintf("NOT back to 256 after %s without finishes (capacity %d)", d.Round(10*time.Millisecond), capNow)
	}
	return fmt.Sprintf("back to 256 after %s without finishes", d.Round(10*time.Millisecond))
}

func sum(c *tally) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, v := range c.n {
		n += v
	}
	return n
}
