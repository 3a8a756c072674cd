package admitter

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// HTTP-level tests of overload: the adaptive limit recovers, and one client's open holds do
// not shut an endpoint for everyone; on sora.video of the test book: capacity 256, critical reserve 200 ‰.

func wideBal(acct, prio string) events.BalanceUpdated {
	b := bal(acct, "wide", 1e12)
	b.Priority = prio
	return b
}

// wideAccounts appends n "wide" accounts prefix0..prefix<n-1> of class prio to more.
func wideAccounts(prefix string, n int, prio string, more ...events.Data) []events.Data {
	for i := 0; i < n; i++ {
		more = append(more, wideBal(fmt.Sprint(prefix, i), prio))
	}
	return more
}

func shortVideoReq(id, acct string) api.AdmitRequest {
	return api.AdmitRequest{RequestID: id, AccountID: acct, Endpoint: "sora.video",
		Estimate: events.Units{VideoSeconds: 1, Resolution: "480p"}}
}

// admitAns posts an admit and decodes the answer (200 or 429 only).
func admitAns(t *testing.T, s *running, r api.AdmitRequest) api.AdmitResponse {
	t.Helper()
	a := post(t, s.url+api.PathAdmit, testSecret, r)
	var ar api.AdmitResponse
	a.decode(t, &ar)
	if a.status != 200 && a.status != 429 {
		t.Fatalf("admit %s: %d %s", r.RequestID, a.status, a.body)
	}
	return ar
}

func finishReq(t *testing.T, s *running, f api.FinishRequest) {
	t.Helper()
	if a := post(t, s.url+api.PathFinish, testSecret, f); a.status != 200 {
		t.Fatalf("finish %s: %d %s", f.RequestID, a.status, a.body)
	}
}

// adaptiveConfig is the test config with the adaptive limit on, in windows of 5 finishes.
func adaptiveConfig(t *testing.T, c *kafkatest.Cluster) Config {
	cfg := testConfig(t, c)
	cfg.AdaptiveEnabled = true
	cfg.AdaptiveWindowSamples = 5
	return cfg
}

// window admits n requests at once, request i for account acct+i (each account's share of
// the endpoint is small), waits hold, then finishes them with f.
func window(t *testing.T, s *running, prefix, acct string, n int, hold time.Duration, f func(*api.FinishRequest)) {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		if ar := admitAns(t, s, shortVideoReq(ids[i], fmt.Sprint(acct, i))); !ar.Allowed {
			t.Fatalf("window %s admit %d: %+v", prefix, i, ar)
		}
	}
	time.Sleep(hold)
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fr := api.FinishRequest{RequestID: id, Status: events.StatusSucceeded, Usage: events.Units{VideoSeconds: 1, Resolution: "480p"}}
			f(&fr)
			finishReq(t, s, fr)
		}()
	}
	wg.Wait()
}

// assertNotLocked checks that the endpoint is at or above the adaptive floor (25 of 256 at
// the default 100 ‰) and that standard traffic is admitted.
func assertNotLocked(t *testing.T, s *running, id string) {
	t.Helper()
	ar := admitAns(t, s, shortVideoReq(id, "other"))
	if !ar.Allowed || ar.Remaining.EndpointCapacity < 25 {
		t.Fatalf("endpoint locked: capacity %d (floor 25), standard admit %+v", ar.Remaining.EndpointCapacity, ar)
	}
}

// TestHTTPAdaptiveMissingDurationNoLockup: finishes without duration_ms, then finishes
// reporting 8 s, must not lock the endpoint (the unchanged admitter took the missing
// duration as a 1 ms baseline and cut the limit to 1).
func TestHTTPAdaptiveMissingDurationNoLockup(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, wideAccounts("w", 5, events.PriorityStandard, wideBal("other", events.PriorityStandard))...)
	s := start(t, adaptiveConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 6 })
	window(t, s, "nodur", "w", 5, 0, func(*api.FinishRequest) {})
	for i := 0; i < 20; i++ {
		window(t, s, fmt.Sprintf("dur%d", i), "w", 5, 0, func(f *api.FinishRequest) { f.DurationMs = 8000 })
	}
	assertNotLocked(t, s, "probe")
}

// TestHTTPAdaptiveLatencyShift: the 2 s → 8 s shift, scaled to 20 ms → 80 ms (each request
// really runs that long, and says so in duration_ms). The limit may back off, but never
// below the floor, and standard traffic is still admitted.
func TestHTTPAdaptiveLatencyShift(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, wideAccounts("w", 5, events.PriorityStandard, wideBal("other", events.PriorityStandard))...)
	s := start(t, adaptiveConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 6 })
	window(t, s, "fast", "w", 5, 20*time.Millisecond, func(f *api.FinishRequest) { f.DurationMs = 20 })
	for i := 0; i < 25; i++ {
		window(t, s, fmt.Sprintf("slow%d", i), "w", 5, 80*time.Millisecond, func(f *api.FinishRequest) { f.DurationMs = 80 })
	}
	assertNotLocked(t, s, "probe")
}

// TestHTTPAdaptiveRecoversWithoutFinishes: after failures cut the limit, nothing finishes
// any more; the limit must grow back with time alone.
func TestHTTPAdaptiveRecoversWithoutFinishes(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, wideAccounts("w", 5, events.PriorityStandard, wideBal("other", events.PriorityStandard))...)
	cfg := adaptiveConfig(t, c)
	cfg.AdaptiveRecoveryMs = 300
	s := start(t, cfg)
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 6 })
	for i := 0; i < 10; i++ {
		window(t, s, fmt.Sprintf("fail%d", i), "w", 5, 0, func(f *api.FinishRequest) { f.Status = events.StatusFailed })
	}
	low := admitAns(t, s, shortVideoReq("low", "other")).Remaining.EndpointCapacity
	if low >= 256 {
		t.Fatalf("failures did not cut the limit: %d", low)
	}
	// At least 3 recovery intervals without a finish. (First run on the unchanged admitter,
	// which has no recovery at all, with a 5.5 s sleep and without the setting.)
	time.Sleep(time.Second)
	if got := admitAns(t, s, shortVideoReq("later", "other")).Remaining.EndpointCapacity; got <= low {
		t.Fatalf("no finishes for a while: capacity %d, was %d; it must grow back by itself", got, low)
	}
}

// TestHTTPCriticalKeepsReserve: standard holds that were never finished fill standard's
// share, then failures shrink the adaptive limit below them. Critical must keep its reserve.
func TestHTTPCriticalKeepsReserve(t *testing.T) {
	c := kafkatest.Start(t)
	data := wideAccounts("failing", 5, events.PriorityCritical, wideBal("crit", events.PriorityCritical))
	data = wideAccounts("std", 12, events.PriorityStandard, data...)
	seed(t, c, data...)
	s := start(t, adaptiveConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 18 })
	for i := 0; i < 204; i++ { // standard's share of 256 (17 per account), never finished
		if ar := admitAns(t, s, shortVideoReq(fmt.Sprint("hold", i), fmt.Sprint("std", i%12))); !ar.Allowed {
			t.Fatalf("hold %d: %+v", i, ar)
		}
	}
	for i := 0; i < 2; i++ { // 256 → 204 → 163
		window(t, s, fmt.Sprintf("fail%d", i), "failing", 5, 0, func(f *api.FinishRequest) { f.Status = events.StatusFailed })
	}
	if ar := admitAns(t, s, shortVideoReq("std-late", "std0")); ar.Allowed || ar.Reason != api.ReasonOverloaded {
		t.Fatalf("standard with 204 open: %+v", ar)
	}
	if ar := admitAns(t, s, shortVideoReq("crit-late", "crit")); !ar.Allowed {
		t.Fatalf("critical shed by others' open holds: %+v", ar)
	}
}

// TestHTTPAccountShare: one account whose tier does not bind admits and never finishes; it
// gets its share of the endpoint, and every other account and class is still admitted.
func TestHTTPAccountShare(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, wideBal("hog", events.PriorityStandard), wideBal("other", events.PriorityStandard),
		wideBal("crit", events.PriorityCritical))
	s := start(t, testConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 3 })
	n := 0
	var last api.AdmitResponse
	for ; n < 300; n++ {
		if last = admitAns(t, s, shortVideoReq(fmt.Sprint("hog", n), "hog")); !last.Allowed {
			break
		}
	}
	if n != 25 || last.Reason != api.ReasonConcurrencyLimited || last.Remaining.ConcurrencyLimit != 25 {
		t.Errorf("one account holds %d of 256 (want its share at the default 100 ‰, 25, then concurrency_limited); last %+v", n, last)
	}
	for _, a := range []string{"other", "crit"} {
		if ar := admitAns(t, s, shortVideoReq("after-"+a, a)); !ar.Allowed {
			t.Errorf("%s after one account's burst: %+v", a, ar)
		}
	}
}
