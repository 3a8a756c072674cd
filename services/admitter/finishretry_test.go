package admitter

import (
	"testing"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestFinishRetryOtherDuration: duration_ms is measured by the caller and may differ between
// a finish and its retry (a client timing its own retry); it does not identify the finish. A
// retry that differs only in duration_ms gets the first answer, not 409; other usage still
// gets 409.
func TestFinishRetryOtherDuration(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, bal("ent", "enterprise", 10_000_000))
	s := start(t, testConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 1 })
	if a := post(t, s.url+api.PathAdmit, testSecret, codeReq("d-1", "ent")); a.status != 200 {
		t.Fatalf("admit: %d %s", a.status, a.body)
	}
	fin := api.FinishRequest{RequestID: "d-1", Status: "succeeded", Usage: usage9000, DurationMs: 1200}
	first := post(t, s.url+api.PathFinish, testSecret, fin)
	if first.status != 200 {
		t.Fatalf("finish: %d %s", first.status, first.body)
	}
	fin.DurationMs = 1350
	again := post(t, s.url+api.PathFinish, testSecret, fin)
	if again.status != 200 || string(again.body) != string(first.body) {
		t.Fatalf("retry with another duration_ms: %d %s, want 200 %s", again.status, again.body, first.body)
	}
	fin.Usage.TokensOut++
	if other := post(t, s.url+api.PathFinish, testSecret, fin); other.status != 409 || other.code(t) != api.CodeRequestIDReused {
		t.Fatalf("retry with other usage: %d %s, want 409", other.status, other.body)
	}
	evs := readEvents(t, c, func(e []events.Event) bool { return count(e, events.TypeRequestFinished, "d-1") >= 1 })
	if n := count(evs, events.TypeRequestFinished, "d-1"); n != 1 {
		t.Fatalf("request.finished events: %d", n)
	}
}
