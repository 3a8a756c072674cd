package chstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/events"
)

// TestRequestsViewDuration: requests_v.duration_ms is the client's duration_ms when it sent
// one, else the time from the request.started event to the request.finished event (both are
// stored); 0 while the request has no finish, or no start to measure from.
func TestRequestsViewDuration(t *testing.T) {
	_, conn := chtest.Open(t)
	st := chstore.NewStore(conn, time.Minute)
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := &rows.Batch{}
	off := int64(0)
	add := func(ms int, d events.Data) {
		ev, err := events.New("test", at.Add(time.Duration(ms)*time.Millisecond), d)
		if err != nil {
			t.Fatal(err)
		}
		pos := rows.Position{Topic: "tally.events", Partition: 0, Offset: off}
		off++
		u, l, ok := rows.FromEvent(ev, pos)
		if !ok {
			t.Fatalf("no row for %s", ev.Type)
		}
		b.Add(pos, 100, u, l)
	}
	start := func(ms int, req string) {
		add(ms, events.RequestStarted{RequestID: req, AccountID: "a1", Endpoint: "video", Tier: "pro", Priority: "standard",
			Funding: "credits", EstimateMicros: 500, HoldMicros: 500, HoldExpiresAt: at.Add(time.Hour), PriceBookVersion: "v1"})
	}
	finish := func(ms int, req string, dur int64) {
		add(ms, events.RequestFinished{RequestID: req, AccountID: "a1", Endpoint: "video", Status: "succeeded",
			CostMicros: 10, DurationMs: dur, PriceBookVersion: "v1"})
	}
	start(0, "r-client") // the client's duration wins
	finish(9_000, "r-client", 1_500)
	start(1_000, "r-none") // none sent: finish − start
	finish(3_250, "r-none", 0)
	start(2_000, "r-open")        // not finished
	finish(4_000, "r-nostart", 0) // its start is not in the table
	b.Range = rows.Range{Topic: "tally.events", Partition: 0, First: 0, Last: off - 1}
	if err := st.BatchInsert(ctx, b); err != nil {
		t.Fatal(err)
	}
	for req, want := range map[string]int64{"r-client": 1_500, "r-none": 2_250, "r-open": 0, "r-nostart": 0} {
		var got int64
		if err := conn.QueryRow(ctx, "SELECT duration_ms FROM requests_v WHERE request_id = ?", req).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: duration_ms %d, want %d", req, got, want)
		}
	}
}
