package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/services/tallyctl/internal/waitfor"
	"github.com/tallyhq/tally/services/tallyctl/stack"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/pricebook"
)

// TestExportAddsUp: on a real pipeline, an account is granted credits (one grant expiring in
// seconds), admits and finishes a request, and admits one it never finishes (its hold
// expires); `tallyctl export` for the month, in JSON and in CSV, lists every journal line of
// the account in the month, and its lines sum, per ledger account, to the journal read
// straight from Kafka and to the statement's figures, to the micro-credit. Months are
// checked: a far-future, a malformed and a future month are refused with a clear message.
func TestExportAddsUp(t *testing.T) {
	// codex.responses holds expire after 2 s, so an abandoned request expires in the test.
	book := strings.Replace(string(pricebook.DefaultJSON()), `"hold_timeout_ms": 300000`, `"hold_timeout_ms": 2000`, 1)
	bookPath := filepath.Join(t.TempDir(), "book.json")
	if err := os.WriteFile(bookPath, []byte(book), 0o600); err != nil {
		t.Fatal(err)
	}
	kc := kafkatest.Start(t)
	ch := chembedtest.Start(t)
	db := chembedtest.NewDatabase(t, ch)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Config{Brokers: kc.Brokers, TopicPrefix: kc.Prefix, Partitions: kafkatest.Partitions,
		ClickHouseAddr: ch.Addr(), ClickHouseDatabase: db, PriceBookPath: bookPath, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	for k, v := range map[string]string{
		"KAFKA_BROKERS": strings.Join(kc.Brokers, ","), "TALLY_TOPIC_PREFIX": kc.Prefix,
		"TALLY_LEDGER_URL": st.LedgerURL, "TALLY_ADMIN_TOKEN": st.AdminToken,
	} {
		t.Setenv(k, v)
	}
	month := time.Now().UTC().Format(finance.MonthLayout)
	const acct = "acct_export"

	if code, out, stderr := run(t, "grant", "-account", acct, "-micros", "20000000", "-id", "g-main"); code != 0 {
		t.Fatalf("grant: exit %d, %s %s", code, out, stderr)
	}
	soon := time.Now().UTC().Add(3 * time.Second).Format(time.RFC3339)
	if code, out, stderr := run(t, "grant", "-account", acct, "-micros", "1500000", "-id", "g-short", "-expires", soon); code != 0 {
		t.Fatalf("short grant: exit %d, %s %s", code, out, stderr)
	}
	accountUntil(t, acct, "both grants", func(v view.Account) bool { return v.AvailableMicros == 21_500_000 })
	cl, err := client.New(client.Config{BaseURL: st.AdmitterURL, APIKey: st.APIKey})
	if err != nil {
		t.Fatal(err)
	}
	// admit returns the request id that was admitted: a denial is an answer too (a repeat of
	// its request id replays it), so each attempt uses a new id.
	admit := func(name, endpoint string, est events.Units) string {
		attempt := 0
		var id string
		waitfor.Eventually(t, "admit "+name, time.Minute, func() error {
			attempt++
			id = fmt.Sprintf("%s-%d", name, attempt)
			_, err := cl.Admit(ctx, api.AdmitRequest{RequestID: id, AccountID: acct, Endpoint: endpoint, Estimate: est})
			var denied *client.DeniedError
			if errors.As(err, &denied) {
				return err // the admitter has not seen the grant yet, or the rate limit
			}
			if err != nil {
				t.Fatalf("admit %s: %v", id, err)
			}
			return nil
		})
		return id
	}
	video := admit("r-video", "sora.video", events.Units{VideoSeconds: 10, Resolution: "1080p"})
	if _, err := cl.Finish(ctx, api.FinishRequest{RequestID: video, Status: events.StatusSucceeded,
		Usage: events.Units{VideoSeconds: 8, Resolution: "1080p"}, DurationMs: 1000}); err != nil {
		t.Fatalf("finish: %v", err)
	}
	admit("r-abandoned", "codex.responses", events.Units{TokensIn: 1000, TokensOut: 1000})

	// Every kind is in the journal once the hold and the short grant have expired.
	var stmt finance.Statement
	from, to, err := finance.ParseMonth(month, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	waitfor.Eventually(t, "grant, hold, charge, expiry and breakage in the journal", time.Minute, func() error {
		code, out, stderr := run(t, "statement", "-account", acct, "-format", "json",
			"-from", from.Format(time.RFC3339), "-to", to.Format(time.RFC3339))
		if code != 0 {
			t.Fatalf("statement: exit %d, %s", code, stderr)
		}
		stmt = finance.Statement{}
		if err := json.Unmarshal([]byte(out), &stmt); err != nil {
			t.Fatal(err)
		}
		kinds := map[string]bool{}
		for _, e := range stmt.Entries {
			kinds[e.Kind] = true
		}
		for _, k := range []string{"grant", "hold", "charge", "expiry", "breakage"} {
			if !kinds[k] {
				return errors.New("no " + k + " line yet")
			}
		}
		return nil
	})
	if time.Now().UTC().Format(finance.MonthLayout) != month {
		t.Skip("the month changed during the test")
	}
	journal, err := finance.ReadJournal(ctx, st.Brokers, st.Topics)
	if err != nil {
		t.Fatal(err)
	}
	fromJournal := map[string]int64{}
	ids := map[string]bool{}
	for _, e := range journal {
		if e.AccountID == acct && !e.EffectiveAt.Before(from) && e.EffectiveAt.Before(to) {
			fromJournal[e.LedgerAccount] += e.AmountMicros
			ids[e.EntryID] = true
		}
	}
	fromStatement := map[string]int64{}
	for _, e := range stmt.Entries {
		fromStatement[e.LedgerAccount] += e.AmountMicros
	}

	// JSON.
	code, out, stderr := run(t, "export", "-account", acct, "-month", month, "-format", "json")
	if code != 0 {
		t.Fatalf("export json: exit %d, %s", code, stderr)
	}
	var x finance.Export
	if err := json.Unmarshal([]byte(out), &x); err != nil {
		t.Fatalf("export json: %v\n%s", err, out)
	}
	if err := x.Check(); err != nil {
		t.Fatal(err)
	}
	fromJSON := map[string]int64{}
	for _, l := range x.Lines {
		fromJSON[l.LedgerAccount] += l.AmountMicros
		if !ids[l.EntryID] {
			t.Errorf("export line %s is not a journal line of the month", l.EntryID)
		}
	}
	totals := map[string]int64{}
	for _, tot := range x.TotalsByLedgerAccount {
		totals[tot.LedgerAccount] = tot.AmountMicros
	}
	if len(x.Lines) != len(ids) || len(x.Lines) != len(stmt.Entries) {
		t.Fatalf("%d export lines, %d journal lines, %d statement entries", len(x.Lines), len(ids), len(stmt.Entries))
	}
	if x.OpeningMicros != stmt.OpeningMicros || x.ClosingMicros != stmt.ClosingMicros {
		t.Fatalf("export opening %d closing %d, statement %d %d", x.OpeningMicros, x.ClosingMicros, stmt.OpeningMicros, stmt.ClosingMicros)
	}
	for _, m := range []map[string]int64{fromJSON, totals, fromStatement} {
		if len(m) != len(fromJournal) {
			t.Fatalf("ledger accounts %v, journal %v", m, fromJournal)
		}
	}
	for k, v := range fromJournal {
		if fromJSON[k] != v || totals[k] != v || fromStatement[k] != v {
			t.Errorf("%s: journal %d, export lines %d, export total %d, statement %d", k, v, fromJSON[k], totals[k], fromStatement[k])
		}
	}
	live := accountUntil(t, acct, "the account", func(view.Account) bool { return true })
	if x.ClosingMicros != live.AvailableMicros+live.HeldMicros {
		t.Fatalf("export closing %d, the ledger's available %d + held %d", x.ClosingMicros, live.AvailableMicros, live.HeldMicros)
	}
	if x.ClosingMicros-x.OpeningMicros != fromJournal[events.LedgerAvailable]+fromJournal[events.LedgerHeld] {
		t.Fatalf("closing − opening %d, customer lines %d", x.ClosingMicros-x.OpeningMicros, fromJournal[events.LedgerAvailable]+fromJournal[events.LedgerHeld])
	}
	t.Logf("%d lines; per ledger account %v; closing %d", len(x.Lines), fromJournal, x.ClosingMicros)

	// CSV, to a file.
	file := filepath.Join(t.TempDir(), "export.csv")
	if code, _, stderr := run(t, "export", "-account", acct, "-month", month, "-o", file); code != 0 {
		t.Fatalf("export csv: exit %d, %s", code, stderr)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("export file: %v %v", fi, err)
	}
	raw, _ := os.ReadFile(file)
	rows, err := csv.NewReader(bytes.NewReader(raw)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	fromCSV, csvTotals := map[string]int64{}, map[string]int64{}
	lines := 0
	var opening, closing int64
	for _, r := range rows[1:] {
		v, err := strconv.ParseInt(r[col["amount_micros"]], 10, 64)
		if err != nil {
			t.Fatalf("row %v: %v", r, err)
		}
		switch r[col["row"]] {
		case "line":
			lines++
			fromCSV[r[col["ledger_account"]]] += v
		case "total_ledger_account":
			csvTotals[r[col["ledger_account"]]] = v
		case "opening":
			opening = v
		case "closing":
			closing = v
		}
	}
	if lines != len(ids) || opening != stmt.OpeningMicros || closing != stmt.ClosingMicros {
		t.Fatalf("CSV: %d lines, opening %d, closing %d; want %d, %d, %d", lines, opening, closing, len(ids), stmt.OpeningMicros, stmt.ClosingMicros)
	}
	for k, v := range fromJournal {
		if fromCSV[k] != v || csvTotals[k] != v {
			t.Errorf("CSV %s: lines %d, total %d, journal %d", k, fromCSV[k], csvTotals[k], v)
		}
	}

	// Bounds.
	next := time.Now().UTC().AddDate(0, 1, 0).Format(finance.MonthLayout)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-month", "2300-01"}, "outside the ledger's time range"},
		{[]string{"-month", "2026-13"}, "want YYYY-MM"},
		{[]string{"-month", next}, "has not begun"},
		{[]string{}, "-month are required"},
		{[]string{"-month", month, "-format", "xml"}, "-format is csv or json"},
	} {
		code, _, stderr := run(t, append([]string{"export", "-account", acct}, c.args...)...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", c.args, code, stderr, c.want)
		}
	}
}
