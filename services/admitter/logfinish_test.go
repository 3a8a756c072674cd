package admitter

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// startUntil runs a service until stop is called (or the test ends) and waits until it is ready.
func startUntil(t testing.TB, cfg Config) (*running, func()) {
	t.Helper()
	s, err := New(cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}
	t.Cleanup(stop)
	select {
	case <-s.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("not ready after 30s")
	}
	return &running{Service: s, url: "http://" + s.Addr()}, stop
}

var usage9000 = events.Units{TokensIn: 2000, TokensOut: 1000} // 9,000 µ at codex prices

// finishedIn returns the request.finished events of requestID in evs.
func finishedIn(evs []events.Event, requestID string) []events.RequestFinished {
	var out []events.RequestFinished
	for _, e := range evs {
		if f, ok := e.Payload.(events.RequestFinished); ok && f.RequestID == requestID {
			out = append(out, f)
		}
	}
	return out
}

// TestFinishAfterRestart: an admitter stopped between admit and finish loses its open
// requests; its next incarnation (same instance id) must settle the finish from the
// request.started it reads back from the events topic, not answer 404.
func TestFinishAfterRestart(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, bal("ent", "enterprise", 10_000_000))
	cfg := testConfig(t, c)
	cfg.InstanceID = "restart"
	a, stop := startUntil(t, cfg)
	waitFor(t, a, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 1 })
	for _, id := range []string{"r-1", "r-2"} {
		if ad := post(t, a.url+api.PathAdmit, testSecret, codeReq(id, "ent")); ad.status != 200 {
			t.Fatalf("admit %s: %d %s", id, ad.status, ad.body)
		}
	}
	stop()

	b, _ := startUntil(t, cfg) // same instance id, same source: its own earlier events
	f := post(t, b.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "r-1", Status: "succeeded",
		Usage: usage9000, DurationMs: 1200})
	var fr api.FinishResponse
	f.decode(t, &fr)
	if f.status != 200 || fr.Funding != "credits" || fr.CostMicros != 9_000 || fr.ChargedMicros != 9_000 || fr.ReleasedMicros != 0 {
		t.Fatalf("finish after restart: %d %s", f.status, f.body)
	}
	// A retry (another duration only) gets the first answer and publishes nothing.
	f2 := post(t, b.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "r-1", Status: "succeeded",
		Usage: usage9000, DurationMs: 1500})
	if f2.status != 200 || string(f2.body) != string(f.body) {
		t.Fatalf("retry: %d %s, want %s", f2.status, f2.body, f.body)
	}
	// Cancelled (no usage): cost 0, the whole hold released.
	f3 := post(t, b.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "r-2", Status: "cancelled"})
	f3.decode(t, &fr)
	if f3.status != 200 || fr.CostMicros != 0 || fr.ReleasedMicros != 7_500 {
		t.Fatalf("cancel after restart: %d %s", f3.status, f3.body)
	}
	// Never admitted: still 404 once the log is read up to date.
	if u := post(t, b.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "nope", Status: "succeeded"}); u.status != 404 || u.code(t) != api.CodeUnknownRequest {
		t.Fatalf("unknown: %d %s", u.status, u.body)
	}
	evs := readEvents(t, c, func(e []events.Event) bool { return count(e, events.TypeRequestFinished, "") >= 2 })
	time.Sleep(200 * time.Millisecond)
	evs = readEvents(t, c, func(e []events.Event) bool { return len(e) >= len(evs) })
	if fins := finishedIn(evs, "r-1"); len(fins) != 1 || fins[0].CostMicros != 9_000 || fins[0].Endpoint != "codex.responses" || fins[0].AccountID != "ent" {
		t.Fatalf("r-1 finished events: %+v", fins)
	}
	// The new incarnation counts the settlement in its local view (hold 7,500 then 9,000 charged).
	waitFor(t, b, "local view", func(tb *decide.Table) bool {
		sn, _ := tb.Account("ent")
		return sn.AvailableMicros+sn.PendingAvailMicros == 10_000_000-9_000
	})
}

// TestFinishAtOtherAdmitter: the finish goes to another admitter than the one that admitted.
// It is settled there; the admitting one frees its in-flight slot when it reads the finish,
// and a repeat at either admitter is answered without a second request.finished.
func TestFinishAtOtherAdmitter(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, bal("ent", "enterprise", 10_000_000))
	var inst []*running
	for _, id := range []string{"x", "y"} {
		cfg := testConfig(t, c)
		cfg.Instances = 2
		cfg.InstanceID = id
		s, _ := startUntil(t, cfg)
		waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 1 })
		inst = append(inst, s)
	}
	x, y := inst[0], inst[1]
	if ad := post(t, x.url+api.PathAdmit, testSecret, codeReq("o-1", "ent")); ad.status != 200 {
		t.Fatalf("admit: %d %s", ad.status, ad.body)
	}
	fin := api.FinishRequest{RequestID: "o-1", Status: "succeeded", Usage: usage9000, DurationMs: 800}
	f := post(t, y.url+api.PathFinish, testSecret, fin) // sent at once: y may not have read the start yet
	var fr api.FinishResponse
	f.decode(t, &fr)
	if f.status != 200 || fr.CostMicros != 9_000 || fr.ChargedMicros != 9_000 {
		t.Fatalf("finish at the other admitter: %d %s", f.status, f.body)
	}
	waitFor(t, x, "x frees its slot", func(tb *decide.Table) bool { return tb.OpenRequests() == 0 })
	// Repeats: at x (from what it read) and at y (from its cache): same cost, no new event.
	for _, s := range []*running{x, y} {
		r := post(t, s.url+api.PathFinish, testSecret, fin)
		var rr api.FinishResponse
		r.decode(t, &rr)
		if r.status != 200 || rr.CostMicros != 9_000 || rr.Funding != "credits" {
			t.Fatalf("repeat at %s: %d %s", s.source, r.status, r.body)
		}
		other := fin
		other.Usage = events.Units{TokensIn: 1}
		if r := post(t, s.url+api.PathFinish, testSecret, other); r.status != 409 {
			t.Fatalf("other usage at %s: %d %s", s.source, r.status, r.body)
		}
	}
	// y holds o-1 from the finish it settled: an admit of that id there is not a new request.
	if a := post(t, y.url+api.PathAdmit, testSecret, codeReq("o-1", "ent")); a.status != 409 || a.code(t) != api.CodeRequestIDReused {
		t.Fatalf("admit of a finished id at y: %d %s", a.status, a.body)
	}
	evs := readEvents(t, c, func(e []events.Event) bool { return count(e, events.TypeRequestFinished, "o-1") >= 1 })
	time.Sleep(200 * time.Millisecond)
	evs = readEvents(t, c, func(e []events.Event) bool { return len(e) >= len(evs) })
	if n := count(evs, events.TypeRequestFinished, "o-1"); n != 1 {
		t.Fatalf("request.finished events for o-1: %d, want 1", n)
	}
	// Both local views count the settlement once.
	for _, s := range inst {
		waitFor(t, s, "local view", func(tb *decide.Table) bool {
			sn, _ := tb.Account("ent")
			return sn.AvailableMicros+sn.PendingAvailMicros == 10_000_000-9_000
		})
	}
}
