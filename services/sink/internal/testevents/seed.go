package testevents

import (
	"context"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/events"
)

// Seeder writes events straight through a rows.Storage (no Kafka), each call one batch with
// a fresh offset range, for query and detector tests.
type Seeder struct {
	TB      testing.TB
	Store   rows.Storage
	Topic   string
	offset  int64
	pending []events.Event
}

// Add queues events.
func (s *Seeder) Add(d events.Data, at time.Time) events.Event {
	s.TB.Helper()
	ev, err := events.New("seed", at, d)
	if err != nil {
		s.TB.Fatalf("seed %T: %v", d, err)
	}
	s.pending = append(s.pending, ev)
	return ev
}

// Flush inserts the queued events as one batch.
func (s *Seeder) Flush() {
	s.TB.Helper()
	if len(s.pending) == 0 {
		return
	}
	b := &rows.Batch{}
	for _, ev := range s.pending {
		pos := rows.Position{Topic: s.Topic, Partition: 0, Offset: s.offset}
		s.offset++
		u, l, ok := rows.FromEvent(ev, pos)
		if !ok {
			s.TB.Fatalf("no row for %s", ev.Type)
		}
		b.Add(pos, 1, u, l)
	}
	s.pending = s.pending[:0]
	if err := s.Store.BatchInsert(context.Background(), b); err != nil {
		s.TB.Fatal(err)
	}
}

// Request queues a started and (if durationMs >= 0) finished request.
func (s *Seeder) Request(account, request, endpoint, tier, funding string, at time.Time, costMicros, durationMs int64, client string) {
	st := events.RequestStarted{RequestID: request, AccountID: account, Endpoint: endpoint, Tier: tier,
		Priority: events.PriorityStandard, Funding: funding, EstimateMicros: costMicros, HoldExpiresAt: at.Add(time.Minute),
		PriceBookVersion: "2026-01", KeyID: "key-" + account, ClientAddr: client}
	if funding == events.FundingCredits {
		st.HoldMicros = costMicros
	} else {
		st.AllowanceMicros = costMicros
	}
	s.Add(st, at)
	if durationMs >= 0 {
		f := events.RequestFinished{RequestID: request, AccountID: account, Endpoint: endpoint, Status: events.StatusSucceeded,
			CostMicros: costMicros, DurationMs: durationMs, PriceBookVersion: "2026-01", KeyID: "key-" + account, ClientAddr: client}
		if funding == events.FundingCredits { // the cost's split: all from the source that funded it
			f.CreditsMicros = costMicros
		} else {
			f.AllowanceMicros = costMicros
		}
		s.Add(f, at.Add(time.Duration(durationMs)*time.Millisecond))
	}
}

// Reject queues a rejection.
func (s *Seeder) Reject(account, request, endpoint, reason string, at time.Time, client string) {
	s.Add(events.RequestRejected{RequestID: request, AccountID: account, Endpoint: endpoint, Tier: "pro",
		Priority: events.PriorityStandard, Reason: reason, RetryAfterMs: 1000, PriceBookVersion: "2026-01",
		KeyID: "key-" + account, ClientAddr: client}, at)
}
