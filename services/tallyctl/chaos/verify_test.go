//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/engine"
	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/tallyctl/internal/journal"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Reference is what the ledger must show: the pure fold over the events topic read after
// the run, de-duplicated by event id (first copy kept), undecodable messages skipped.
type Reference struct {
	Messages    int64
	Undecodable int64
	Duplicates  int64 // copies of an event id already folded
	Balances    map[string]finance.Balance
	Entries     map[string]events.LedgerEntry // by entry id
	EventIDs    map[string]bool               // distinct decodable event ids (clock ticks excluded)
	Ticks       int                           // the ledger's clock ticks among the messages
	Started     map[string]string             // request id -> account
	Rejected    map[string]bool
	Finished    map[string]int64 // request id -> cost
	Cancelled   map[string]bool  // request ids with a request.finished of status cancelled
	Other       map[string]bool  // ids of grants, adjustments, account updates, flags
	Bad         []kafka.Message  // the undecodable messages
}

// BuildReference reads the events topic to its end and folds it.
func BuildReference(ctx context.Context, h *Harness) (*Reference, error) {
	ref := &Reference{Balances: map[string]finance.Balance{}, Entries: map[string]events.LedgerEntry{},
		EventIDs: map[string]bool{}, Started: map[string]string{}, Rejected: map[string]bool{},
		Finished: map[string]int64{}, Cancelled: map[string]bool{}, Other: map[string]bool{}}
	states := map[int]*fold.State{}
	var out fold.Output
	err := engine.ReadAll(ctx, h.Kafka.Brokers, h.Kafka.Topics.Events, func(m kafka.Message) error {
		ref.Messages++
		ev, err := events.Decode(m.Value)
		if err != nil {
			ref.Undecodable++
			ref.Bad = append(ref.Bad, m)
			return nil
		}
		if _, tick := ev.Payload.(events.ClockTick); tick {
			// The ledger's clock tick: folded (it moves the partition's log time) but not a
			// workload event, and the sink stores no row for it.
			ref.Ticks++
		} else if ref.EventIDs[ev.ID] {
			ref.Duplicates++
			return nil
		} else {
			ref.EventIDs[ev.ID] = true
		}
		switch p := ev.Payload.(type) {
		case events.ClockTick:
		case events.RequestStarted:
			ref.Started[p.RequestID] = p.AccountID
		case events.RequestRejected:
			ref.Rejected[p.RequestID] = true
		case events.RequestFinished:
			ref.Finished[p.RequestID] = p.CostMicros
			if p.Status == events.StatusCancelled {
				ref.Cancelled[p.RequestID] = true
			}
		default:
			ref.Other[ev.ID] = true
		}
		st := states[m.Partition]
		if st == nil {
			st = fold.New(h.FoldConfig, int32(m.Partition))
			states[m.Partition] = st
		}
		st.Apply(fold.Input{Offset: m.Offset, Event: &ev, RecordTimeNs: engine.RecordTimeNs(m)}, &out)
		for i := range out.Entries {
			le := out.Entries[i].Event()
			ref.Entries[le.EntryID] = le
		}
		out.Reset()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reference: %w", err)
	}
	for _, st := range states {
		st.Accounts(func(a *fold.Account) {
			ref.Balances[a.ID] = finance.Balance{AccountID: a.ID, AvailableMicros: a.AvailableMicros, HeldMicros: a.HeldMicros, OverageMicros: a.OverageMicros}
		})
	}
	return ref, nil
}

// Summary is one scenario's line in the report table.
type Summary struct {
	Scenario      string
	Faults        string
	Events        int64 // distinct events in the events topic
	Acked         int64 // answers the workload was given (each backed by one event)
	Lost          int64
	Duplicated    int64
	OverAdmission string
	Notes         []string
}

// Loss and duplication details, kept for the failure message.
type findings struct {
	lost, dup []string
}

func (f *findings) lose(format string, a ...any) { f.lost = append(f.lost, fmt.Sprintf(format, a...)) }
func (f *findings) dupe(format string, a ...any) { f.dup = append(f.dup, fmt.Sprintf(format, a...)) }

// VerifyOptions say which parts a scenario checks.
type VerifyOptions struct {
	Ledger *Proc // nil: no live-ledger check
	Sink   bool  // check ClickHouse (journal and usage_events)
}

// Verify flushes the expiries, builds the reference and checks, to the micro-credit:
// every acknowledged answer has its event; the live ledger equals the reference; the
// journal in ClickHouse equals the reference's entries (no entry id with two contents, none
// missing, none extra) and its sums equal the balances; finance.Reconcile is OK; the
// usage_events rows are exactly the distinct events. It fills s.Lost and s.Duplicated and
// fails t on any difference.
func Verify(t *testing.T, ctx context.Context, h *Harness, rec *Record, opt VerifyOptions, s *Summary) *Reference {
	t.Helper()
	// Every hold, grant and parked finish of the run is due within these; then one event per
	// partition moves every partition's clock past them.
	time.Sleep(time.Duration(max(holdTimeoutMsMax, parkTimeoutMs, 4000)+500) * time.Millisecond)
	if err := h.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	ref, err := BuildReference(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	s.Events = int64(len(ref.EventIDs))
	var f findings
	if rec != nil {
		s.Acked = rec.Acked()
		checkAcked(rec, ref, &f)
	}
	if opt.Ledger != nil {
		checkLive(t, ctx, h, opt.Ledger, ref, &f)
	}
	if opt.Sink {
		checkJournal(t, ctx, h, ref, &f)
		checkUsage(t, ctx, h, ref, &f)
	}
	if opt.Ledger != nil && opt.Sink {
		rep, err := finance.Replay(ctx, h.Kafka.Brokers, h.Kafka.Topics, h.FoldConfig, false, nil)
		if err != nil {
			t.Fatalf("finance.Replay: %v", err)
		}
		report, err := finance.Reconcile(ctx, rep, finance.HTTPLive(adminWith(h), "http://"+opt.Ledger.Addr, h.AdminToken),
			func(ctx context.Context) (map[string]finance.Balance, error) { return journal.Sums(ctx, h.Conn) })
		if err != nil {
			t.Fatalf("finance.Reconcile: %v", err)
		}
		s.Notes = append(s.Notes, fmt.Sprintf("reconcile: %d accounts, %d events, %d differences", report.Accounts, report.Events, len(report.Differences)))
		if !report.OK() {
			t.Errorf("finance.Reconcile: %d differences, first: %+v", len(report.Differences), report.Differences[0])
		}
	}
	s.Lost, s.Duplicated = int64(len(f.lost)), int64(len(f.dup))
	if len(f.lost) > 0 {
		var kafkaN, journalN, usageN int
		for _, l := range f.lost {
			switch {
			case strings.HasPrefix(l, "journal entry"):
				journalN++
			case strings.HasPrefix(l, "event "):
				usageN++
			default:
				kafkaN++
			}
		}
		s.Notes = append(s.Notes, fmt.Sprintf("lost breakdown: %d acknowledged answers without their event in Kafka, %d journal entries missing from ClickHouse, %d events missing from usage_events",
			kafkaN, journalN, usageN))
	}
	show := func(what string, l []string) {
		if len(l) > 0 {
			if len(l) > 20 {
				l = append(l[:20:20], fmt.Sprintf("... and %d more", len(l)-20))
			}
			t.Errorf("%s (%d):\n  %s", what, len(l), strings.Join(l, "\n  "))
		}
	}
	show("lost", f.lost)
	show("duplicated", f.dup)
	return ref
}

func adminWith(h *Harness) *http.Client { return adminClient }

// checkAcked: no answer without its durable event.
func checkAcked(rec *Record, ref *Reference, f *findings) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for rid, a := range rec.Allowed {
		if ref.Started[rid] != a.Account {
			f.lose("admit %s answered allowed but no request.started in the events topic", rid)
		}
	}
	for rid, reason := range rec.Denied {
		// A denial's durable trail is its request.rejected, or, for an admission revoked by
		// log-order confirmation (several admitters), the request.started it published and
		// the request.finished (cancelled) that took it back, both before the answer.
		revoked := ref.Started[rid] != "" && ref.Cancelled[rid]
		if !ref.Rejected[rid] && !revoked {
			f.lose("admit %s answered denied (%s) but no request.rejected (nor a revoked request.started) in the events topic", rid, reason)
		}
	}
	for rid, cost := range rec.Finished {
		if c, ok := ref.Finished[rid]; !ok || c != cost {
			f.lose("finish %s answered cost %d but the events topic has %v (present %v)", rid, cost, c, ok)
		}
	}
	for id := range rec.Grants {
		if !ref.Other[id] {
			f.lose("grant event %s answered 202 but is not in the events topic", id)
		}
	}
	for id := range rec.Updates {
		if !ref.Other[id] {
			f.lose("account update %s answered 202 but is not in the events topic", id)
		}
	}
}

// checkLive waits until the live ledger shows the reference for every account.
func checkLive(t *testing.T, ctx context.Context, h *Harness, p *Proc, ref *Reference, f *findings) {
	t.Helper()
	live := finance.HTTPLive(adminClient, "http://"+p.Addr, h.AdminToken)
	var diffs []string
	err := eventually(ctx, settleTimeout, func() error {
		diffs = diffs[:0]
		for id, b := range ref.Balances {
			v, ok, err := live(ctx, id)
			if err != nil {
				return err
			}
			if !ok || v.AvailableMicros != b.AvailableMicros || v.HeldMicros != b.HeldMicros || v.OverageMicros != b.OverageMicros {
				diffs = append(diffs, fmt.Sprintf("%s: live available/held/overage %d/%d/%d (known %v), reference %d/%d/%d",
					id, v.AvailableMicros, v.HeldMicros, v.OverageMicros, ok, b.AvailableMicros, b.HeldMicros, b.OverageMicros))
			}
		}
		if len(diffs) > 0 {
			return fmt.Errorf("%d accounts differ", len(diffs))
		}
		return nil
	})
	if err != nil {
		sort.Strings(diffs)
		if len(diffs) > 10 {
			diffs = diffs[:10]
		}
		t.Errorf("live ledger vs reference after %s: %v\n  %s", settleTimeout, err, strings.Join(diffs, "\n  "))
	}
	for id, b := range ref.Balances {
		if b.HeldMicros != 0 {
			t.Errorf("account %s still holds %d µ after every hold timed out", id, b.HeldMicros)
		}
	}
}

// checkJournal compares ledger_entries with the reference entry by entry. ReplacingMergeTree
// may keep a re-inserted row until a merge, so rows are grouped by entry_id: each id must
// have exactly one distinct content, equal to the reference's.
func checkJournal(t *testing.T, ctx context.Context, h *Harness, ref *Reference, f *findings) {
	t.Helper()
	type row struct {
		contents uint64
		le       events.LedgerEntry
	}
	var got map[string]row
	err := eventually(ctx, settleTimeout, func() error {
		got = map[string]row{}
		rows, err := h.Conn.Query(ctx, `SELECT entry_id, uniqExact(transaction_id, account_id, ledger_account, amount_micros, kind,
			cause_event_id, request_id, project_id, grant_id, effective_at), any(transaction_id), any(account_id), any(ledger_account),
			any(amount_micros), any(kind), any(cause_event_id), any(request_id), any(project_id), any(grant_id)
			FROM ledger_entries GROUP BY entry_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r row
			var id string
			if err := rows.Scan(&id, &r.contents, &r.le.TransactionID, &r.le.AccountID, &r.le.LedgerAccount, &r.le.AmountMicros,
				&r.le.Kind, &r.le.CauseEventID, &r.le.RequestID, &r.le.ProjectID, &r.le.GrantID); err != nil {
				return err
			}
			got[id] = r
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(got) < len(ref.Entries) {
			return fmt.Errorf("%d of %d journal entries in ClickHouse", len(got), len(ref.Entries))
		}
		return nil
	})
	if err != nil {
		t.Logf("journal in ClickHouse: %v", err)
	}
	for id, le := range ref.Entries {
		r, ok := got[id]
		switch {
		case !ok:
			f.lose("journal entry %s (%s %s %d) missing from ClickHouse", id, le.AccountID, le.Kind, le.AmountMicros)
		case r.contents != 1:
			f.dupe("journal entry %s has %d distinct contents in ClickHouse", id, r.contents)
		case r.le.AccountID != le.AccountID || r.le.LedgerAccount != le.LedgerAccount || r.le.AmountMicros != le.AmountMicros ||
			r.le.Kind != le.Kind || r.le.TransactionID != le.TransactionID || r.le.RequestID != le.RequestID || r.le.ProjectID != le.ProjectID:
			f.dupe("journal entry %s differs from the reference: %+v vs %+v", id, r.le, le)
		}
	}
	for id, r := range got {
		if _, ok := ref.Entries[id]; !ok {
			f.dupe("journal entry %s (%s %s %d) in ClickHouse is not in the reference", id, r.le.AccountID, r.le.Kind, r.le.AmountMicros)
		}
	}
	// The sums with FINAL equal the balances.
	sums, err := journal.Sums(ctx, h.Conn)
	if err != nil {
		t.Fatalf("journal sums: %v", err)
	}
	for id, b := range ref.Balances {
		c := sums[id]
		if c.AvailableMicros != b.AvailableMicros || c.HeldMicros != b.HeldMicros {
			t.Errorf("journal sums of %s: available/held %d/%d, reference %d/%d", id, c.AvailableMicros, c.HeldMicros, b.AvailableMicros, b.HeldMicros)
		}
	}
	// No request is charged twice: one charge transaction per request at most.
	double, err := journal.DoubleCharges(ctx, h.Conn)
	if err != nil {
		t.Fatalf("double charges: %v", err)
	}
	for _, d := range double {
		f.dupe("%s", d)
	}
}

// expectedUsage is the set of event ids usage_events must hold: the distinct events of the
// events topic and the request.expired of the journal topic.
func expectedUsage(ctx context.Context, h *Harness, ref *Reference) (map[string]bool, error) {
	want := make(map[string]bool, len(ref.EventIDs))
	for id := range ref.EventIDs {
		want[id] = true
	}
	err := engine.ReadAll(ctx, h.Kafka.Brokers, h.Kafka.Topics.Journal, func(m kafka.Message) error {
		ev, err := events.Decode(m.Value)
		if err != nil {
			return fmt.Errorf("journal %d/%d: %w", m.Partition, m.Offset, err)
		}
		if ev.Type == events.TypeRequestExpired {
			want[ev.ID] = true
		}
		return nil
	})
	return want, err
}

// checkUsage compares the set of usage_events ids with the expected set: no gaps, and no
// id with two rows after FINAL.
func checkUsage(t *testing.T, ctx context.Context, h *Harness, ref *Reference, f *findings) {
	t.Helper()
	want, err := expectedUsage(ctx, h, ref)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	err = eventually(ctx, settleTimeout, func() error {
		clear(got)
		rows, err := h.Conn.Query(ctx, `SELECT toString(event_id), count() FROM usage_events FINAL GROUP BY event_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			var n uint64
			if err := rows.Scan(&id, &n); err != nil {
				return err
			}
			got[id] = n
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(got) < len(want) {
			return fmt.Errorf("%d of %d events in usage_events", len(got), len(want))
		}
		return nil
	})
	if err != nil {
		t.Logf("usage_events: %v", err)
	}
	for id := range want {
		if _, ok := got[id]; !ok {
			f.lose("event %s missing from usage_events", id)
		}
	}
	for id, n := range got {
		if !want[id] {
			f.dupe("usage_events has %s, not an event of the topics", id)
		}
		if n > 1 {
			f.dupe("usage_events has %d rows for %s after FINAL", n, id)
		}
	}
}

// DeadLetters reads the dead-letter topic: per consumer, the (topic/partition/offset) of
// each dead-lettered message with its reason.
func DeadLetters(ctx context.Context, h *Harness) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	err := engine.ReadAll(ctx, h.Kafka.Brokers, h.Kafka.Topics.DeadLetter, func(m kafka.Message) error {
		hd := map[string]string{}
		for _, x := range m.Headers {
			hd[x.Key] = string(x.Value)
		}
		c := hd[kafkax.HeaderDLQConsumer]
		if out[c] == nil {
			out[c] = map[string]string{}
		}
		out[c][hd[kafkax.HeaderDLQTopic]+"/"+hd[kafkax.HeaderDLQPartition]+"/"+hd[kafkax.HeaderDLQOffset]] = hd[kafkax.HeaderDLQReason]
		return nil
	})
	return out, err
}

var summaryMu sync.Mutex

// Report prints the scenario's summary table and appends it to .out/chaos-summary.md at
// the repo root.
func Report(t *testing.T, s Summary) {
	t.Helper()
	result := "PASS"
	if t.Failed() {
		result = "FAIL"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| scenario | faults injected | events | acked answers | lost | duplicated | over-admission measured | result |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %s | %s |\n", s.Scenario, s.Faults, s.Events, s.Acked, s.Lost, s.Duplicated,
		s.OverAdmission, result)
	for _, n := range s.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	t.Log(b.String())
	summaryMu.Lock()
	defer summaryMu.Unlock()
	dir := filepath.Join("..", "..", "..", ".out")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("summary file: %v", err)
		return
	}
	fh, err := os.OpenFile(filepath.Join(dir, "chaos-summary.md"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Logf("summary file: %v", err)
		return
	}
	defer fh.Close()
	kafkaKind := "kfake"
	if os.Getenv("KAFKA_BROKERS") != "" {
		kafkaKind = "real Kafka " + os.Getenv("KAFKA_BROKERS")
	}
	fmt.Fprintf(fh, "\n### %s (%s, %s, seed %d)\n%s", t.Name(), time.Now().UTC().Format(time.RFC3339), kafkaKind, seed(), b.String())
}
