//go:build chaos

package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/events"
)

// hostileStream builds scenario 5's messages for accounts, seeded: tier and grant per
// account, then request lifecycles (some rejected, some finished before they started, some
// finishes for requests that never started). Every event is written twice, the copy placed
// 0-3 messages after the original (a producer's re-send), and bad messages are mixed in:
// garbage bytes, truncated JSON, an unknown event type version, an unknown CloudEvents
// spec version, a payload failing validation, an oversized message.
func hostileStream(t *testing.T, rng *rand.Rand, accounts []string) (msgs []kafka.Message, good, bad int) {
	t.Helper()
	at := time.Now()
	var evs []events.Event
	add := func(d events.Data) {
		at = at.Add(time.Millisecond)
		ev, err := events.New(chaosSource, at, d)
		if err != nil {
			t.Fatalf("hostile event %T: %v", d, err)
		}
		evs = append(evs, ev)
	}
	for _, a := range accounts {
		add(events.AccountUpdated{AccountID: a, Tier: "pro", Priority: events.PriorityStandard})
		add(events.CreditsGranted{GrantID: "g-h-" + a, AccountID: a, AmountMicros: 50_000_000, Source: "purchase", Priority: 100})
	}
	units := events.Units{TokensIn: 1000, TokensOut: 1000}
	started := func(a, rid string, hold int64) events.RequestStarted {
		return events.RequestStarted{RequestID: rid, AccountID: a, Endpoint: "codex.responses", Model: "codex", Tier: "pro",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, Estimate: units, EstimateMicros: hold, HoldMicros: hold,
			HoldExpiresAt: at.Add(2 * time.Second), PriceBookVersion: "chaos-1", KeyID: "chaos"}
	}
	finished := func(a, rid string, cost int64) events.RequestFinished {
		return events.RequestFinished{RequestID: rid, AccountID: a, Endpoint: "codex.responses", Model: "codex",
			Status: events.StatusSucceeded, Usage: units, CostMicros: cost, DurationMs: 100, PriceBookVersion: "chaos-1", KeyID: "chaos"}
	}
	for i := 0; i < 60; i++ {
		for _, a := range accounts {
			rid := fmt.Sprintf("rh-%s-%d", a, i)
			hold, cost := int64(7_500), int64(1_000+rng.IntN(12_000))
			switch r := rng.IntN(100); {
			case r < 10: // finish before start
				add(finished(a, rid, cost))
				add(started(a, rid, hold))
			case r < 15: // finish of a request that never started
				add(finished(a, rid+"-unknown", cost))
			case r < 25:
				add(events.RequestRejected{RequestID: rid, AccountID: a, Endpoint: "codex.responses", Model: "codex", Tier: "pro",
					Priority: events.PriorityStandard, Reason: "rate_limited", EstimateMicros: hold, RetryAfterMs: 100,
					PriceBookVersion: "chaos-1", KeyID: "chaos"})
			case r < 30: // started, never finished: expires
				add(started(a, rid, hold))
			default:
				add(started(a, rid, hold))
				add(finished(a, rid, cost))
			}
		}
	}
	// Each event twice, the copy 0-3 messages later.
	type slot struct {
		m   kafka.Message
		pos float64
	}
	var slots []slot
	for i, ev := range evs {
		v, err := ev.Encode()
		if err != nil {
			t.Fatal(err)
		}
		m := kafka.Message{Key: []byte(ev.Subject), Value: v}
		slots = append(slots, slot{m, float64(i)}, slot{m, float64(i) + 0.5 + float64(rng.IntN(4))})
	}
	good = len(evs)
	// Bad messages, keyed to real accounts so that they sit among the good ones.
	valid, _ := evs[len(evs)-1].Encode()
	var env map[string]any
	_ = json.Unmarshal(valid, &env)
	variant := func(mut func(map[string]any)) []byte {
		c := map[string]any{}
		for k, v := range env {
			c[k] = v
		}
		mut(c)
		b, _ := json.Marshal(c)
		return b
	}
	bads := [][]byte{
		[]byte("\x00\x01garbage\xff\xfe"),
		[]byte("not json at all"),
		valid[:len(valid)/2], // truncated
		variant(func(c map[string]any) { c["type"] = "tally.request.finished.v9" }), // unknown schema version
		variant(func(c map[string]any) { c["specversion"] = "2.0" }),
		variant(func(c map[string]any) { c["data"] = map[string]any{"request_id": "x"} }), // fails validation
		[]byte(`{"specversion":"1.0"}`),
		[]byte(strings.Repeat("x", 70_000)), // beyond events.MaxEventBytes
	}
	for i := 0; i < 24; i++ {
		b := bads[i%len(bads)]
		if i >= len(bads) {
			b = make([]byte, 1+rng.IntN(300))
			for j := range b {
				b[j] = byte(rng.IntN(256))
			}
		}
		a := accounts[rng.IntN(len(accounts))]
		slots = append(slots, slot{kafka.Message{Key: []byte(a), Value: b}, float64(rng.IntN(len(evs)))})
	}
	bad = 24
	sort.SliceStable(slots, func(i, j int) bool { return slots[i].pos < slots[j].pos })
	for _, s := range slots {
		msgs = append(msgs, s.m)
	}
	return msgs, good, bad
}

// TestHostileMessages is scenario 5: messages produced straight to the events topic
// misbehave (duplicates of every event, finishes before starts, finishes for unknown
// requests, garbage bytes, an unknown schema version) between two stretches of normal
// traffic. Balances stay exact, the bad messages are dead-lettered with reasons by every
// consumer, and no consumer stops.
func TestHostileMessages(t *testing.T) { hostileScenario(t, false) }

// TestLateDuplicatesLive is scenario 5 with one more fault: after the stream, every event of
// it is written once more, minutes of log later for its account (beyond the per-account rings
// the ledger used to dedupe with; it now remembers applied ids for
// LEDGER_DEDUPE_WINDOW_MS of log time, see TestLateDuplicateFold). Set
// CHAOS_LATE_DUPLICATES=0 to skip it.
func TestLateDuplicatesLive(t *testing.T) {
	if os.Getenv("CHAOS_LATE_DUPLICATES") == "0" {
		t.Skip("CHAOS_LATE_DUPLICATES=0")
	}
	hostileScenario(t, true)
}

func hostileScenario(t *testing.T, late bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h := NewHarness(t)
	led := h.Ledger()
	snk := h.Sink()
	adm := h.Admitter("a1", 1)
	w := &Workload{H: h, Name: "s5", Seed: seed() + 5, Mix: DefaultMix, Workers: 8, Target: 3_000,
		Admitters: []*Proc{adm}, Ledger: led}
	if err := w.Setup(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed(), 5))
	var hostile []string
	for i := 0; i < 12; i++ {
		hostile = append(hostile, fmt.Sprintf("acct-s5-hostile-%02d", i))
	}
	msgs, good, bad := hostileStream(t, rng, hostile)
	for i := 0; i < len(msgs); i += 500 {
		if err := h.Produce(ctx, msgs[i:min(i+500, len(msgs))]...); err != nil {
			t.Fatal(err)
		}
	}
	if late {
		// The same events once more, in the same order, after the whole stream.
		seen := map[string]bool{}
		var again []kafka.Message
		for _, m := range msgs {
			if ev, err := events.Decode(m.Value); err == nil && !seen[ev.ID] {
				seen[ev.ID] = true
				again = append(again, m)
			}
		}
		for i := 0; i < len(again); i += 500 {
			if err := h.Produce(ctx, again[i:min(i+500, len(again))]...); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Normal traffic again: the consumers must still be folding and storing.
	w.Target = w.Rec.Acked() + 2_000
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	s := Summary{Scenario: "5 hostile messages", OverAdmission: "n/a (single admitter)",
		Faults: fmt.Sprintf("%d events each sent twice, %d bad messages", good, bad)}
	if late {
		s.Scenario, s.Faults = "5b late duplicates", s.Faults+", then every event a third time after the stream"
	}
	ref := Verify(t, ctx, h, w.Rec, VerifyOptions{Ledger: led, Sink: true}, &s)
	if ref.Undecodable != int64(bad) {
		t.Errorf("reference saw %d undecodable messages, want %d", ref.Undecodable, bad)
	}
	if want := int64(good) * map[bool]int64{false: 1, true: 2}[late]; ref.Duplicates < want {
		t.Errorf("reference saw %d duplicate copies, want at least %d", ref.Duplicates, want)
	}
	// Dead letters: every bad message, by each consumer of the events topic, with a reason.
	dl, err := DeadLetters(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, consumer := range []string{"ledger", "sink", "admitter/a1"} {
		got := dl[consumer]
		missing := 0
		for _, m := range ref.Bad {
			reason, ok := got[fmt.Sprintf("%s/%d/%d", h.Kafka.Topics.Events, m.Partition, m.Offset)]
			if !ok || reason == "" {
				missing++
			}
		}
		note := ""
		if consumer == "admitter/a1" {
			note = "; by design the admitter's peer follower skips unreadable input events and leaves them to the ledger"
		}
		s.Notes = append(s.Notes, fmt.Sprintf("dead letters by %s: %d (bad messages not dead-lettered with a reason: %d%s)", consumer, len(got), missing, note))
		if missing > 0 && consumer != "admitter/a1" {
			t.Errorf("%s: %d of %d bad messages not in the dead-letter topic with a reason", consumer, missing, len(ref.Bad))
		}
	}
	var keys []string
	for k := range dl {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, reason := range dl[k] {
			s.Notes = append(s.Notes, fmt.Sprintf("sample reason (%s): %.120q", k, reason))
			break
		}
	}
	for _, p := range []*Proc{led, snk, adm} {
		if !p.Running() || p.Starts != 1 {
			t.Errorf("%s stopped (running %v, starts %d)\n%s", p.Name, p.Running(), p.Starts, p.Tail(30))
		}
	}
	s.Notes = append(s.Notes, errorsLine(w.Rec))
	Report(t, s)
}
