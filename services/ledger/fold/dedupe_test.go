package fold

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// foldWith folds evs (offsets 0..) into a fresh state of cfg; restoreAt, if in (0, len),
// persists every account through the binary codec at that point and continues in a
// restored state, as the engine does after a restart.
func foldWith(t *testing.T, cfg Config, evs []*events.Event, restoreAt int) (*State, *Output) {
	t.Helper()
	return foldWithRecords(t, cfg, evs, nil, restoreAt)
}

// foldWithRecords is foldWith with each event's Kafka record timestamp (recNs[i], 0 = none;
// nil = none for every event).
func foldWithRecords(t *testing.T, cfg Config, evs []*events.Event, recNs []int64, restoreAt int) (*State, *Output) {
	t.Helper()
	s := New(cfg, 0)
	out := &Output{}
	for i, e := range evs {
		if i == restoreAt && i > 0 {
			var accts []*Account
			s.Accounts(func(a *Account) { accts = append(accts, roundTrip(t, a)) })
			s2 := New(cfg, 0)
			restore(s2, s.Snapshot(), accts)
			s = s2
		}
		in := Input{Offset: int64(i), Event: e}
		if recNs != nil {
			in.RecordTimeNs = recNs[i]
		}
		s.Apply(in, out)
	}
	return s, out
}

// money is what a late copy must not change: balances, grants, holds, parked finishes and
// the history counters.
func money(a *Account) string {
	holds := a.Holds
	if len(holds) == 0 {
		holds = nil
	}
	b, _ := json.Marshal(struct {
		Avail, Held, Over, Extra, Granted, Charged, Breakage, Adjusted int64
		Grants                                                         []Grant
		Holds                                                          []Hold
		Parked                                                         []Parked
		Reqs, Rejs                                                     int32
		OK                                                             int64
		Pen                                                            int32
	}{a.AvailableMicros, a.HeldMicros, a.OverageMicros, a.ExtraMicros, a.GrantedMicros, a.ChargedMicros, a.BreakageMicros,
		a.AdjustedMicros, a.Grants, holds, a.Parked, a.ReqsCur + a.ReqsPrev, a.RejsCur + a.RejsPrev, a.SettledOK, a.PenaltyPermille})
	return string(b)
}

func kinds(out *Output) []string {
	var k []string
	for _, an := range out.Anomalies {
		k = append(k, an.Kind)
	}
	return k
}

// TestLateDuplicates: copies of applied events (the same event, or a new event with the same
// business id) that arrive long after the old per-account rings would have forgotten them,
// but within the dedupe window, change nothing; also across a persist/restore.
func TestLateDuplicates(t *testing.T) {
	exp := t0.Add(30 * time.Minute)
	type tc struct {
		name string
		// first writes the events whose late copies are tested; copies returns them.
		first  func(l *logb) []*events.Event
		copies func(l *logb, first []*events.Event, at time.Time)
	}
	same := func(l *logb, first []*events.Event, _ time.Time) { l.evs = append(l.evs, first...) }
	cases := []tc{
		{"settled request: start and finish", func(l *logb) []*events.Event {
			return []*events.Event{l.add(t0, start("a", "r0", 7_500, t0)), l.add(t0.Add(time.Second), finish("a", "r0", 5_000))}
		}, same},
		{"settled request: finish alone", func(l *logb) []*events.Event {
			l.add(t0, start("a", "r0", 7_500, t0))
			return []*events.Event{l.add(t0.Add(time.Second), finish("a", "r0", 5_000))}
		}, same},
		{"settled request: start alone", func(l *logb) []*events.Event {
			s := l.add(t0, start("a", "r0", 7_500, t0))
			l.add(t0.Add(time.Second), finish("a", "r0", 5_000))
			return []*events.Event{s}
		}, same},
		{"settled request: new event ids, same request id", func(l *logb) []*events.Event {
			l.add(t0, start("a", "r0", 7_500, t0))
			l.add(t0.Add(time.Second), finish("a", "r0", 5_000))
			return nil
		}, func(l *logb, _ []*events.Event, at time.Time) {
			l.add(at, start("a", "r0", 7_500, at))
			l.add(at, finish("a", "r0", 5_000))
		}},
		{"expired request, then late finish, then copies", func(l *logb) []*events.Event {
			s := l.add(t0, start("a", "r0", 7_500, t0))
			f := l.add(t0.Add(10*time.Minute), finish("a", "r0", 5_000)) // after the 5 min hold expired: late charge
			return []*events.Event{s, f}
		}, same},
		{"finish before start, both copied", func(l *logb) []*events.Event {
			f := l.add(t0, finish("a", "r0", 5_000))
			s := l.add(t0.Add(time.Second), start("a", "r0", 7_500, t0))
			return []*events.Event{f, s}
		}, same},
		{"unknown finish (park timeout), then its start and copies", func(l *logb) []*events.Event {
			f := l.add(t0, finish("a", "ghost", 5_000))
			l.add(t0.Add(2*time.Hour), grant("b", "gb", 1, 0, nil)) // moves the clock past the park timeout
			s := l.add(t0.Add(2*time.Hour), start("a", "ghost", 7_500, t0.Add(2*time.Hour)))
			return []*events.Event{f, s}
		}, same},
		{"live grant", func(l *logb) []*events.Event {
			return []*events.Event{l.add(t0, grant("a", "g-late", 123, 0, nil))}
		}, same},
		{"expired grant (its remainder went to breakage)", func(l *logb) []*events.Event {
			return []*events.Event{l.add(t0, grant("a", "g-late", 123, 0, &exp))}
		}, same},
		{"expired grant, new event id", func(l *logb) []*events.Event {
			l.add(t0, grant("a", "g-late", 123, 0, &exp))
			return nil
		}, func(l *logb, _ []*events.Event, at time.Time) {
			e := at.Add(time.Hour)
			l.add(at, grant("a", "g-late", 123, 0, &e))
		}},
		{"adjustment credit", func(l *logb) []*events.Event {
			return []*events.Event{l.add(t0, events.CreditsAdjusted{AdjustmentID: "x1", AccountID: "a", AmountMicros: 77, Reason: "fix"})}
		}, same},
		{"adjustment debit, new event id", func(l *logb) []*events.Event {
			l.add(t0, events.CreditsAdjusted{AdjustmentID: "x1", AccountID: "a", AmountMicros: -77, Reason: "fix"})
			return nil
		}, func(l *logb, _ []*events.Event, at time.Time) {
			l.add(at, events.CreditsAdjusted{AdjustmentID: "x1", AccountID: "a", AmountMicros: -77, Reason: "fix"})
		}},
		{"rejection, flag and account update", func(l *logb) []*events.Event {
			return []*events.Event{
				l.add(t0, events.RequestRejected{RequestID: "x", AccountID: "a", Endpoint: ep, Tier: "free", Priority: events.PriorityBatch, Reason: "rate", PriceBookVersion: "v1"}),
				l.add(t0, events.AbuseFlagged{FlagID: "f1", AccountID: "a", Rule: "r", Score: 1, Action: events.ActionThrottle, WindowStart: t0.Add(-time.Minute), WindowEnd: t0}),
				l.add(t0, events.AccountUpdated{AccountID: "a", Tier: "pro", Priority: events.PriorityStandard}),
			}
		}, same},
	}
	for _, c := range cases {
		for _, restore := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/restore=%v", c.name, restore), func(t *testing.T) {
				l := &logb{t: t}
				l.add(t0.Add(-time.Minute), grant("a", "g1", 10_000_000, 1, nil))
				first := c.first(l)
				// 100 more requests over the next hours: far beyond the old rings (16 requests,
				// 8 events), well within the 24 h window.
				at := t0.Add(3 * time.Hour)
				for i := 0; i < 100; i++ {
					at = at.Add(time.Minute)
					rid := fmt.Sprint("fill-", i)
					l.add(at, start("a", rid, 1_000, at))
					l.add(at.Add(time.Second), finish("a", rid, 900))
				}
				l.add(at.Add(time.Hour), events.AccountUpdated{AccountID: "a", Tier: "pro", Priority: events.PriorityStandard})
				clean := append([]*events.Event(nil), l.evs...)
				c.copies(l, first, at.Add(2*time.Hour))
				ncopies := len(l.evs) - len(clean)
				// Something after the copies, so that a copy applied by mistake would show.
				l.add(at.Add(3*time.Hour), grant("a", "g-after", 5, 0, nil))
				clean = append(clean, l.evs[len(l.evs)-1])
				cfg := DefaultConfig(pricebook.Default())
				restoreAt := 0
				if restore {
					restoreAt = len(clean) - 1 // just before the copies
				}
				want, _ := foldWith(t, cfg, clean, 0)
				got, out := foldWith(t, cfg, l.evs, restoreAt)
				if err := got.Check(); err != nil {
					t.Fatal(err)
				}
				if g, w := money(got.Account("a")), money(want.Account("a")); g != w {
					t.Fatalf("late copies changed the account:\n got %s\nwant %s", g, w)
				}
				dups := 0
				for _, k := range kinds(out) {
					if k == AnomalyDuplicate {
						dups++
					}
				}
				if dups < ncopies {
					t.Fatalf("%d copies, %d reported as duplicates: %v", ncopies, dups, kinds(out))
				}
			})
		}
	}
}

// TestTooLate: an event older than the dedupe window cannot be proven new: it is not
// applied, and it is reported with its offset and the horizon. An event at the horizon is
// applied.
func TestTooLate(t *testing.T) {
	cfg := DefaultConfig(pricebook.Default())
	cfg.DedupeWindowNs = int64(time.Hour)
	l := &logb{t: t}
	l.add(t0, grant("a", "g1", 1_000_000, 0, nil))
	s0 := l.add(t0, start("a", "r0", 10_000, t0))
	f0 := l.add(t0.Add(time.Second), finish("a", "r0", 8_000))
	g := l.add(t0.Add(time.Second), grant("a", "g2", 500, 0, nil))
	l.add(t0.Add(3*time.Hour), grant("b", "gb", 1, 0, nil)) // the clock moves 3 h on
	base := len(l.evs)
	l.evs = append(l.evs, s0, f0, g)                                        // copies, 3 h late: too late
	l.add(t0.Add(90*time.Minute), grant("c", "gc", 1, 0, nil))              // new account, 90 min late: too late too
	l.add(t0.Add(2*time.Hour), grant("a", "g3", 7, 0, nil))                 // exactly at the horizon: applied
	l.add(t0.Add(2*time.Hour-time.Nanosecond), grant("a", "g4", 9, 0, nil)) // just before it: too late
	s, out := foldWith(t, cfg, l.evs, 0)
	mustCheck(t, s, out)
	a := s.Account("a")
	if want := int64(1_000_000 - 8_000 + 500 + 7); a.AvailableMicros != want {
		t.Fatalf("available %d, want %d", a.AvailableMicros, want)
	}
	if s.Account("c") != nil {
		t.Fatal("a too-late event created an account")
	}
	var late []Anomaly
	for _, an := range out.Anomalies {
		if an.Kind == AnomalyTooLate {
			late = append(late, an)
		}
	}
	horizon := t0.Add(2 * time.Hour).UnixNano()
	wantOff := []int64{int64(base), int64(base + 1), int64(base + 2), int64(base + 3), int64(base + 5)}
	if len(late) != len(wantOff) {
		t.Fatalf("too-late anomalies %+v, want offsets %v", late, wantOff)
	}
	for i, an := range late {
		if an.Offset != wantOff[i] || an.HorizonNs != horizon {
			t.Fatalf("anomaly %d: %+v, want offset %d horizon %d", i, an, wantOff[i], horizon)
		}
	}
	if late[0].RequestID != "r0" || late[0].EventID != s0.ID || late[3].AccountID != "c" {
		t.Fatalf("anomaly fields: %+v", late)
	}
}

// TestDedupeBoundRaisesFloor: beyond DedupePerAccountMax the oldest ids are evicted and
// counted; a copy of an evicted id is then refused as too late (never applied again), while
// copies of remembered ids are duplicates and new events are applied.
func TestDedupeBoundRaisesFloor(t *testing.T) {
	cfg := DefaultConfig(pricebook.Default())
	cfg.DedupePerAccountMax = 16
	l := &logb{t: t}
	l.add(t0, grant("a", "g1", 10_000_000, 0, nil))
	var starts, finishes []*events.Event
	at := t0
	for i := 0; i < 40; i++ {
		at = at.Add(time.Second)
		rid := fmt.Sprint("r", i)
		starts = append(starts, l.add(at, start("a", rid, 1_000, at)))
		finishes = append(finishes, l.add(at, finish("a", rid, 500)))
	}
	n := len(l.evs)
	l.evs = append(l.evs, starts[0], finishes[0], finishes[39])
	l.add(at, start("a", "new", 1_000, at)) // new, at the current time: applied
	s, out := foldWith(t, cfg, l.evs, 0)
	mustCheck(t, s, out)
	a := s.Account("a")
	if a.AvailableMicros != 10_000_000-40*500-1_000 || a.HeldMicros != 1_000 {
		t.Fatalf("available %d held %d", a.AvailableMicros, a.HeldMicros)
	}
	if out.Evicted != 40-16 {
		t.Fatalf("evicted %d, want %d", out.Evicted, 40-16)
	}
	if a.Dedupe.Len() != 16 || a.Dedupe.FloorNs != t0.Add(24*time.Second).UnixNano() {
		t.Fatalf("dedupe len %d floor %v", a.Dedupe.Len(), time.Unix(0, a.Dedupe.FloorNs).UTC())
	}
	got := kinds(out)[len(kinds(out))-3:]
	if want := []string{AnomalyTooLate, AnomalyTooLate, AnomalyDuplicate}; !reflect.DeepEqual(got, want) {
		t.Fatalf("anomalies of the copies %v, want %v", got, want)
	}
	for _, an := range out.Anomalies {
		if an.Kind == AnomalyTooLate && (an.Offset < int64(n) || an.HorizonNs != a.Dedupe.FloorNs+1) {
			t.Fatalf("too-late anomaly %+v", an)
		}
	}
}

// TestRefeedChangesNothing: the whole randomized log fed a second time (every event a late
// copy) moves no money: each copy is a duplicate or too late, under the default window, a
// short window and a tight per-account bound, with and without a restore in between.
func TestRefeedChangesNothing(t *testing.T) {
	short := DefaultConfig(pricebook.Default())
	short.DedupeWindowNs = int64(time.Hour)
	tight := DefaultConfig(pricebook.Default())
	tight.DedupePerAccountMax = 16
	for name, cfg := range map[string]Config{"default": DefaultConfig(pricebook.Default()), "1h window": short, "bound 16": tight} {
		for seed := uint64(1); seed <= 3; seed++ {
			evs := randomLog(t, seed, 8_000, 20)
			want, wantOut := foldWith(t, cfg, evs, 0)
			mustCheck(t, want, wantOut)
			twice := append(append([]*events.Event(nil), evs...), evs...)
			got, out := foldWith(t, cfg, twice, len(evs)+int(seed)*7)
			if err := got.Check(); err != nil {
				t.Fatalf("%s seed %d: %v", name, seed, err)
			}
			if len(out.Entries) != len(wantOut.Entries) || len(out.Expired) != len(wantOut.Expired) {
				t.Fatalf("%s seed %d: the second pass produced %d entries and %d expiries", name, seed,
					len(out.Entries)-len(wantOut.Entries), len(out.Expired)-len(wantOut.Expired))
			}
			want.Accounts(func(a *Account) {
				if g, w := money(got.Account(a.ID)), money(a); g != w {
					t.Fatalf("%s seed %d: account %s changed:\n got %s\nwant %s", name, seed, a.ID, g, w)
				}
			})
			var late, dup int
			for _, an := range out.Anomalies[len(wantOut.Anomalies):] {
				switch an.Kind {
				case AnomalyTooLate:
					late++
				case AnomalyDuplicate:
					dup++
				default:
					t.Fatalf("%s seed %d: second pass anomaly %+v", name, seed, an)
				}
			}
			if late+dup != len(evs) {
				t.Fatalf("%s seed %d: %d copies, %d duplicates + %d too late", name, seed, len(evs), dup, late)
			}
			t.Logf("%s seed %d: %d copies: %d duplicates, %d too late; %d ids remembered, %d evicted",
				name, seed, len(evs), dup, late, got.DedupeEntries(), out.Evicted)
		}
	}
}

// TestIdleAccountsArePruned: the memory of accounts that fold nothing more is released once
// the window has passed them, so idle accounts cost no dedupe memory.
func TestIdleAccountsArePruned(t *testing.T) {
	cfg := DefaultConfig(pricebook.Default())
	cfg.DedupeWindowNs = int64(time.Hour)
	l := &logb{t: t}
	for i := 0; i < 50; i++ {
		acct := fmt.Sprint("idle-", i)
		l.add(t0, grant(acct, "g", 1000, 0, nil))
		l.add(t0, start(acct, "r", 10, t0))
		l.add(t0, finish(acct, "r", 5))
	}
	s, out := foldWith(t, cfg, l.evs, 0)
	if s.DedupeEntries() != 50 {
		t.Fatalf("%d ids remembered, want 50", s.DedupeEntries())
	}
	s.Apply(Input{Offset: 1000, Event: (&logb{t: t, seq: 1000}).add(t0.Add(2*time.Hour+time.Second), grant("busy", "g", 1, 0, nil))}, out)
	mustCheck(t, s, out)
	if s.DedupeEntries() != 0 {
		t.Fatalf("%d ids remembered after the window passed, want 0", s.DedupeEntries())
	}
	if a := s.Account("idle-7"); a.Dedupe.ring != nil || a.Dedupe.FloorNs != t0.UnixNano() {
		t.Fatalf("idle account keeps its ring (%d slots), floor %d", len(a.Dedupe.ring), a.Dedupe.FloorNs)
	}
}

// TestDedupeRingAndIndex checks the ring and its index against a model through growth past
// the linear threshold, wrap-around, pruning and shrinking.
func TestDedupeRingAndIndex(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var d Dedupe
	var model []dedupeEntry
	at := int64(0)
	for step := 0; step < 200_000; step++ {
		switch k := r.IntN(100); {
		case k < 55 || len(model) < 3:
			at += int64(r.IntN(3))
			key := r.Uint64() &^ 1
			if r.IntN(10) == 0 && len(model) > 0 {
				key = model[r.IntN(len(model))].key // repeated keys are allowed
			}
			if len(model) >= 300 {
				d.popHead()
				model = model[1:]
			}
			d.Append(key, at)
			model = append(model, dedupeEntry{key, at})
		case k < 60:
			cut := at - int64(r.IntN(40))
			d.prune(cut)
			for len(model) > 0 && model[0].atNs < cut {
				model = model[1:]
			}
		default:
			key := r.Uint64() &^ 1
			if r.IntN(2) == 0 {
				key = model[r.IntN(len(model))].key
			}
			want := false
			for _, e := range model {
				want = want || e.key == key
			}
			if d.has(key) != want {
				t.Fatalf("step %d: has(%x) = %v, want %v (n %d, ring %d)", step, key, !want, want, d.n, len(d.ring))
			}
		}
		if d.Len() != len(model) {
			t.Fatalf("step %d: len %d, model %d", step, d.Len(), len(model))
		}
		if step%997 == 0 {
			if err := d.check(); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			for i, e := range model {
				if k, a := d.At(i); k != e.key || a != e.atNs {
					t.Fatalf("step %d: entry %d differs", step, i)
				}
			}
		}
	}
}

// TestCodecVersion1: a record written before the timed memory (version 1, fixed rings) still
// restores; its remembered ids are kept for a window from the first fold after the restore.
func TestCodecVersion1(t *testing.T) {
	l := &logb{t: t}
	l.add(t0, grant("a", "g1", 1_000_000, 0, nil))
	st := l.add(t0, start("a", "r0", 1_000, t0))
	fin := l.add(t0, finish("a", "r0", 900))
	adj := l.add(t0, events.CreditsAdjusted{AdjustmentID: "x1", AccountID: "a", AmountMicros: 5, Reason: "fix"})
	s, _ := run(t, l.evs)
	a := s.Account("a")
	// The version-1 form of this account: the same fields, then rings instead of the memory.
	// The prefix before the dedupe section is the encoding of the account without dedupe,
	// grants, holds or parked finishes, less its last 5 bytes (empty dedupe, three zero counts).
	c := *a
	c.Dedupe, c.Billing = Dedupe{}, nil
	full := c.AppendBinary(nil)
	c.Grants, c.Holds, c.Parked = nil, nil, nil
	bare := c.AppendBinary(nil)
	// Less the billing section of version 4 (one 0 byte: none) and the organization section
	// of version 5 (two 0 bytes: no funding account, no budgets).
	full, bare = full[:len(full)-3], bare[:len(bare)-3]
	if !bytes.HasSuffix(bare, []byte{0, 0, 0, 0, 0}) {
		t.Fatalf("unexpected v2 tail % x", bare[len(bare)-5:])
	}
	cut := len(bare) - 5
	v1 := append([]byte{1}, full[1:cut]...)
	ring := func(ids ...uint64) {
		v1 = append(v1, byte(len(ids)))
		for _, h := range ids {
			v1 = binary.LittleEndian.AppendUint64(v1, h)
		}
	}
	ring(hashID(st.ID), hashID(fin.ID), hashID(adj.ID)) // events
	ring(hashID("r0"))                                  // requests
	ring(hashID("x1"))                                  // grant or adjustment ids
	v1 = append(v1, full[cut+2:]...)
	got, err := DecodeAccount(v1)
	if err != nil {
		t.Fatal(err)
	}
	if got.Dedupe.Len() != 3+1+2 || !got.legacy {
		t.Fatalf("v1 decoded %d ids, legacy %v", got.Dedupe.Len(), got.legacy)
	}
	s2 := New(DefaultConfig(pricebook.Default()), 0)
	restore(s2, s.Snapshot(), []*Account{got})
	later := t0.Add(20 * time.Hour)
	l2 := &logb{t: t, seq: 100}
	l2.add(later, grant("b", "gb", 1, 0, nil)) // the first fold: stamps the legacy ids at 20 h
	l2.evs = append(l2.evs, st, fin, adj)
	l2.add(later.Add(23*time.Hour), start("a", "r0", 1_000, later.Add(23*time.Hour))) // new event, same request
	var out Output
	for i, e := range l2.evs {
		s2.Apply(Input{Offset: int64(100 + i), Event: e}, &out)
	}
	if err := s2.Check(); err != nil {
		t.Fatal(err)
	}
	b := s2.Account("a")
	if b.AvailableMicros != a.AvailableMicros || b.HeldMicros != 0 {
		t.Fatalf("after v1 restore: available %d held %d, want %d 0 (anomalies %v)", b.AvailableMicros, b.HeldMicros, a.AvailableMicros, kinds(&out))
	}
	if want := []string{AnomalyDuplicate, AnomalyDuplicate, AnomalyDuplicate, AnomalyDuplicate}; !reflect.DeepEqual(kinds(&out), want) {
		t.Fatalf("anomalies %v, want %v", kinds(&out), want)
	}
	// The re-encoded record is version 2 and round-trips.
	if c := roundTrip(t, b); c.Dedupe.Len() != b.Dedupe.Len() || c.AppendBinary(nil)[0] != codecVersion {
		t.Fatal("v2 re-encoding")
	}
}

// TestDedupeRingCapped: a ring grows in small steps (at most two entries or a quarter over
// its ids) and never beyond DedupePerAccountMax.
func TestDedupeRingCapped(t *testing.T) {
	cfg := DefaultConfig(pricebook.Default())
	cfg.DedupePerAccountMax = 100
	l := &logb{t: t}
	l.add(t0, grant("a", "g1", 10_000_000, 0, nil))
	at := t0
	for i := 0; i < 300; i++ {
		at = at.Add(time.Second)
		rid := fmt.Sprint("r", i)
		l.add(at, start("a", rid, 1_000, at))
		l.add(at, finish("a", rid, 500))
		if i < 40 || i == 299 {
			s, out := foldWith(t, cfg, l.evs, 0)
			mustCheck(t, s, out)
			d := &s.Account("a").Dedupe
			if n, c := d.Len(), len(d.ring); c > cfg.DedupePerAccountMax || (n <= 32 && c > max(n+2, 8)) || c > n+n/4+2 {
				t.Fatalf("after %d requests: %d ids in a ring of %d", i+1, n, c)
			}
		}
	}
}

// TestFutureTime: an event stamped further ahead of its Kafka record timestamp than
// FutureSkewNsMax is refused (AnomalyFutureTime, with its offset and the latest time allowed)
// and does not move the clock: the open hold does not expire, the later events are not too
// late, and a replay refuses the same event. Within the bound, or without a record
// timestamp, events apply as before.
func TestFutureTime(t *testing.T) {
	cfg := DefaultConfig(pricebook.Default())
	cfg.DedupeWindowNs = int64(time.Hour)
	skew := time.Duration(cfg.FutureSkewNsMax)
	type in struct {
		at, rec time.Time // event time and record timestamp (zero: none)
		d       events.Data
	}
	far := t0.Add(365 * 24 * time.Hour)
	longHold := start("a", "r1", 10_000, t0)
	longHold.HoldExpiresAt = t0.Add(time.Hour)
	log := []in{
		{t0, t0, grant("a", "g1", 1_000_000, 0, nil)},
		{t0, t0, longHold},                                                                    // its hold expires at t0+1h
		{far, t0.Add(time.Second), grant("a", "g-far", 5, 0, nil)},                            // refused: a year ahead
		{t0.Add(time.Second + skew + 1), t0.Add(time.Second), grant("a", "g-1ns", 7, 0, nil)}, // refused: 1 ns over
		{t0.Add(time.Second + skew), t0.Add(time.Second), grant("a", "g-edge", 11, 0, nil)},   // at the bound: applied
		{t0.Add(2 * time.Second), t0.Add(2 * time.Second), finish("a", "r1", 8_000)},          // not too late
		{t0.Add(3 * time.Second), time.Time{}, grant("a", "g-norec", 13, 0, nil)},             // no record time: applied
	}
	for _, restoreAt := range []int{0, 4} {
		l := &logb{t: t}
		recs := make([]int64, len(log))
		for i, x := range log {
			l.add(x.at, x.d)
			if !x.rec.IsZero() {
				recs[i] = x.rec.UnixNano()
			}
		}
		s, out := foldWithRecords(t, cfg, l.evs, recs, restoreAt)
		mustCheck(t, s, out)
		a := s.Account("a")
		if want := int64(1_000_000 - 8_000 + 11 + 13); a.AvailableMicros != want {
			t.Fatalf("restore at %d: available %d, want %d", restoreAt, a.AvailableMicros, want)
		}
		var fut []Anomaly
		for _, an := range out.Anomalies {
			switch an.Kind {
			case AnomalyFutureTime:
				fut = append(fut, an)
			case AnomalyTooLate, AnomalyLateFinish:
				t.Fatalf("restore at %d: %+v: the refused event moved the clock", restoreAt, an)
			}
		}
		horizon := t0.Add(time.Second + skew).UnixNano()
		if len(fut) != 2 || fut[0].Offset != 2 || fut[1].Offset != 3 || fut[0].HorizonNs != horizon || fut[0].EventID != l.evs[2].ID || fut[0].AccountID != "a" {
			t.Fatalf("restore at %d: future-time anomalies %+v", restoreAt, fut)
		}
		if s.Watermark().After(t0.Add(time.Second + skew)) {
			t.Fatalf("restore at %d: watermark %v moved past the newest accepted event", restoreAt, s.Watermark())
		}
		if s.Snapshot().Offset != int64(len(l.evs)-1) {
			t.Fatalf("restore at %d: offset %d", restoreAt, s.Snapshot().Offset)
		}
	}
}
