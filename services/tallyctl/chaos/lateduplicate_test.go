//go:build chaos

package chaos

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// TestLateDuplicateFold checks, on the pure fold, what a duplicate of an event does when it
// arrives after 40 more requests of its account (beyond the per-account rings the ledger
// used to dedupe with, 8 event ids and 16 request ids): the copies of a settled request's
// start and finish change nothing, because the ledger remembers applied ids for
// LEDGER_DEDUPE_WINDOW_MS of log time (fold.Dedupe). It runs by default; set
// CHAOS_LATE_DUPLICATES=0 to skip it (and TestLateDuplicatesLive).
func TestLateDuplicateFold(t *testing.T) {
	if os.Getenv("CHAOS_LATE_DUPLICATES") == "0" {
		t.Skip("CHAOS_LATE_DUPLICATES=0")
	}
	book := pricebook.Default()
	cfg := fold.DefaultConfig(book)
	at := time.Now()
	var stream []events.Event
	add := func(d events.Data) events.Event {
		at = at.Add(time.Millisecond)
		ev, err := events.New(chaosSource, at, d)
		if err != nil {
			t.Fatal(err)
		}
		stream = append(stream, ev)
		return ev
	}
	const a = "acct-late"
	add(events.CreditsGranted{GrantID: "g1", AccountID: a, AmountMicros: 10_000_000, Source: "purchase", Priority: 1})
	var first []events.Event
	for i := 0; i < 40; i++ {
		rid := fmt.Sprintf("r%d", i)
		s := add(events.RequestStarted{RequestID: rid, AccountID: a, Endpoint: "codex.responses", Model: "codex", Tier: "enterprise",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, EstimateMicros: 7500, HoldMicros: 7500,
			HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: book.Version})
		f := add(events.RequestFinished{RequestID: rid, AccountID: a, Endpoint: "codex.responses", Model: "codex",
			Status: events.StatusSucceeded, CostMicros: 5000, PriceBookVersion: book.Version})
		if i == 0 {
			first = append(first, s, f)
		}
	}
	run := func(evs []events.Event) fold.Account {
		st := fold.New(cfg, 0)
		var out fold.Output
		for i := range evs {
			st.Apply(fold.Input{Offset: int64(i), Event: &evs[i]}, &out)
			out.Reset()
		}
		return *st.Account(a)
	}
	clean := run(stream)
	dup := run(append(append([]events.Event{}, stream...), first...))
	if clean.AvailableMicros != dup.AvailableMicros || clean.HeldMicros != dup.HeldMicros {
		t.Errorf("late copies of request r0's start and finish (same event ids) changed the balance: available/held %d/%d, without them %d/%d",
			dup.AvailableMicros, dup.HeldMicros, clean.AvailableMicros, clean.HeldMicros)
	}
}
