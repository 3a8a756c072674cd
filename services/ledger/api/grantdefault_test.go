package api_test

import (
	"net/http/httptest"
	"testing"

	"github.com/tallyhq/tally/shared/events"
)

// TestGrantPriorityDefault: a grant posted without a priority gets events.DefaultGrantPriority
// (the same default tallyctl grant uses); an explicit 0 stays 0.
func TestGrantPriorityDefault(t *testing.T) {
	h, pub := hostileHandler(t)
	for _, c := range []struct {
		body string
		want int32
	}{
		{`{"grant_id":"g1","amount_micros":5}`, events.DefaultGrantPriority},
		{`{"grant_id":"g2","amount_micros":5,"priority":0}`, 0},
		{`{"grant_id":"g3","amount_micros":5,"priority":7}`, 7},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, hostileRequest("grants", "acme", "application/json", c.body))
		evs := pub.take()
		if rec.Code != 202 || len(evs) != 1 {
			t.Fatalf("%s: %d %s, %d events", c.body, rec.Code, rec.Body, len(evs))
		}
		if g := evs[0].Payload.(events.CreditsGranted); g.Priority != c.want {
			t.Fatalf("%s: priority %d, want %d", c.body, g.Priority, c.want)
		}
	}
}
