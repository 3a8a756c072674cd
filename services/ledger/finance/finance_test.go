package finance_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/internal/gen"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/pricebook"
)

var t0 = time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)

func foldLog(t *testing.T, log []events.Event) (*fold.State, []events.LedgerEntry) {
	t.Helper()
	s := fold.New(fold.DefaultConfig(pricebook.Default()), 0)
	var out fold.Output
	for i := range log {
		s.Apply(fold.Input{Offset: int64(i), Event: &log[i]}, &out)
	}
	var j []events.LedgerEntry
	for i := range out.Entries {
		j = append(j, out.Entries[i].Event())
	}
	return s, j
}

func TestStatementAddsUp(t *testing.T) {
	log := gen.RandomLog(3, 20_000, 20, t0, 2000)
	s, journal := foldLog(t, log)
	end := log[len(log)-1].Time.Add(24 * time.Hour)
	mid := t0.Add(end.Sub(t0) / 2)
	for _, id := range []string{"acct-0", "acct-7", "acct-19"} {
		a := s.Account(id)
		whole, err := finance.NewStatement(journal, id, t0.Add(-time.Hour), end)
		if err != nil {
			t.Fatal(err)
		}
		if whole.OpeningMicros != 0 || whole.ClosingMicros != a.AvailableMicros+a.HeldMicros || whole.Check() != nil {
			t.Fatalf("%s: statement opening %d closing %d, ledger available+held %d", id, whole.OpeningMicros, whole.ClosingMicros, a.AvailableMicros+a.HeldMicros)
		}
		// Two consecutive periods chain: the first's closing is the second's opening.
		p1, _ := finance.NewStatement(journal, id, t0.Add(-time.Hour), mid)
		p2, _ := finance.NewStatement(journal, id, mid, end)
		if p1.ClosingMicros != p2.OpeningMicros || p2.ClosingMicros != whole.ClosingMicros || len(p1.Entries)+len(p2.Entries) != len(whole.Entries) {
			t.Fatalf("%s: periods do not chain: %d/%d %d/%d", id, p1.ClosingMicros, p2.OpeningMicros, p2.ClosingMicros, whole.ClosingMicros)
		}
		// CSV: the running balance of the last entry row is the closing balance.
		var buf bytes.Buffer
		if err := p2.WriteCSV(&buf); err != nil {
			t.Fatal(err)
		}
		rows, err := csv.NewReader(&buf).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		last := rows[len(rows)-1]
		if last[0] != "closing" || last[9] != strconv.FormatInt(p2.ClosingMicros, 10) || len(rows) != len(p2.Entries)+3 {
			t.Fatalf("csv: %d rows, last %v", len(rows), last)
		}
		if len(p2.Entries) > 0 && rows[len(rows)-2][9] != strconv.FormatInt(p2.ClosingMicros, 10) {
			t.Fatalf("csv: running balance %s, closing %d", rows[len(rows)-2][9], p2.ClosingMicros)
		}
		buf.Reset()
		if err := p2.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		var back finance.Statement
		if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back.Check() != nil || back.ClosingMicros != p2.ClosingMicros {
			t.Fatalf("json round trip: %v", err)
		}
	}
	bad := finance.Statement{AccountID: "x", OpeningMicros: 5, ClosingMicros: 6}
	if bad.Check() == nil {
		t.Fatal("a statement that does not add up passed Check")
	}
}

func TestReplayAndReconcileOnKafka(t *testing.T) {
	c := kafkatest.Start(t)
	log := gen.RandomLog(11, 5_000, 40, t0, 2000)
	w := kafkax.NewWriter(c.Brokers, c.Topics.Events, kafkax.DefaultWriterConfig)
	defer w.Close()
	var msgs []kafka.Message
	for _, e := range log {
		v, _ := e.Encode()
		msgs = append(msgs, kafka.Message{Key: []byte(e.Subject), Value: v})
	}
	msgs = append(msgs, kafka.Message{Key: []byte("acct-1"), Value: []byte("garbage")})
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	var calls int
	rep, err := finance.Replay(context.Background(), c.Brokers, c.Topics, fold.DefaultConfig(pricebook.Default()), false, func(done, total int64) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	if rep.Events != int64(len(log)) || rep.Undecodable != 1 || calls == 0 {
		t.Fatalf("replay: %d events, %d undecodable, %d progress calls", rep.Events, rep.Undecodable, calls)
	}
	// The replay is per partition; each account lives in one, so totals match a single fold.
	single, _ := foldLog(t, log)
	for _, b := range rep.Balances() {
		a := single.Account(b.AccountID)
		if a.AvailableMicros != b.AvailableMicros || a.HeldMicros != b.HeldMicros || a.OverageMicros != b.OverageMicros {
			t.Fatalf("%s: replay %+v, single fold %d/%d/%d", b.AccountID, b, a.AvailableMicros, a.HeldMicros, a.OverageMicros)
		}
	}
	// Reconcile: an exact live copy agrees; one micro-credit off is reported.
	bal := map[string]finance.Balance{}
	for _, b := range rep.Balances() {
		bal[b.AccountID] = b
	}
	live := func(_ context.Context, id string) (view.Account, bool, error) {
		b, ok := bal[id]
		return view.Account{AccountID: id, AvailableMicros: b.AvailableMicros, HeldMicros: b.HeldMicros, OverageMicros: b.OverageMicros,
			Position: view.Position{Partition: b.Partition, Offset: b.Offset, Watermark: b.Watermark}}, ok, nil
	}
	ch := func(context.Context) (map[string]finance.Balance, error) { return bal, nil }
	r, err := finance.Reconcile(context.Background(), rep, live, ch)
	if err != nil || !r.OK() || r.Accounts != len(bal) {
		t.Fatalf("reconcile of an exact copy: %+v %v", r, err)
	}
	b := bal["acct-3"]
	b.AvailableMicros++
	bal["acct-3"] = b
	r, err = finance.Reconcile(context.Background(), rep, live, ch)
	if err != nil || r.OK() || len(r.Differences) != 2 || r.Differences[0].AccountID != "acct-3" {
		t.Fatalf("reconcile missed a one-micro difference: %+v", r)
	}
	// A live view that moved past the replay is counted, not compared.
	b.Offset++
	bal["acct-3"] = b
	r, err = finance.Reconcile(context.Background(), rep, live, nil)
	if err != nil || !r.OK() || r.Moved != 1 {
		t.Fatalf("reconcile of a moved account: %+v %v", r, err)
	}
}
