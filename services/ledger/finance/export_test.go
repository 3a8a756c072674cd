package finance_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/internal/gen"
	"github.com/tallyhq/tally/shared/events"
)

func TestParseMonth(t *testing.T) {
	now := time.Date(2026, 12, 4, 14, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in       string
		from, to string // "" = an error containing err
		err      string
	}{
		{"2026-11", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", ""},
		{"2026-12", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z", ""}, // the current month, to date
		{"2024-02", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z", ""},
		{"1970-01", "1970-01-01T00:00:00Z", "1970-02-01T00:00:00Z", ""},
		{"2027-01", "", "", "has not begun"},
		{"2300-01", "", "", "outside the ledger's time range"},
		{"1969-12", "", "", "outside the ledger's time range"},
		{"2026-13", "", "", "want YYYY-MM"},
		{"2026-1", "", "", "want YYYY-MM"},
		{"2026-11-01", "", "", "want YYYY-MM"},
		{"", "", "", "want YYYY-MM"},
	} {
		from, to, err := finance.ParseMonth(c.in, now)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: err %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || from.Format(time.RFC3339) != c.from || to.Format(time.RFC3339) != c.to {
			t.Errorf("%q: [%s, %s) %v, want [%s, %s)", c.in, from, to, err, c.from, c.to)
		}
	}
	// The last month the ledger can date a line in is accepted once it has begun.
	if _, _, err := finance.ParseMonth("2199-12", events.MaxTime); err != nil {
		t.Errorf("2199-12: %v", err)
	}
}

// TestExportAddsUpToTheJournal: over a log spanning three calendar months, each month's
// export passes Check, one month's closing is the next one's opening, the exports' totals
// per ledger account add up to the account's whole journal per ledger account, the last
// closing is the fold's balance, and the CSV carries the same lines and totals as the JSON.
func TestExportAddsUpToTheJournal(t *testing.T) {
	log := gen.RandomLog(7, 6_000, 6, t0, 2_000_000)
	if last := log[len(log)-1].Time; last.Month() == t0.Month() || last.Sub(t0) < 45*24*time.Hour {
		t.Fatalf("the log ends %s: want it to span months", last)
	}
	st, journal := foldLog(t, log)
	now := log[len(log)-1].Time.Add(time.Hour)
	const id = "acct-2"
	want := map[string]int64{} // the account's journal per ledger account
	for _, e := range journal {
		if e.AccountID == id {
			want[e.LedgerAccount] += e.AmountMicros
		}
	}
	got := map[string]int64{}
	var prevClosing int64
	months := 0
	for m := time.Date(t0.Year(), t0.Month(), 1, 0, 0, 0, 0, time.UTC); !m.After(now); m = m.AddDate(0, 1, 0) {
		x, err := finance.NewExport(journal, id, m.Format(finance.MonthLayout), now)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.Check(); err != nil {
			t.Fatal(err)
		}
		if x.OpeningMicros != prevClosing {
			t.Fatalf("%s opens at %d, the month before closed at %d", x.Month, x.OpeningMicros, prevClosing)
		}
		prevClosing = x.ClosingMicros
		for _, tot := range x.TotalsByLedgerAccount {
			got[tot.LedgerAccount] += tot.AmountMicros
		}
		if len(x.Lines) > 0 {
			months++
		}
		checkCSVMatchesJSON(t, x)
	}
	if months < 2 {
		t.Fatalf("lines in %d months, want at least 2", months)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: exports sum to %d, the journal to %d", k, got[k], v)
		}
	}
	var bal int64
	st.Accounts(func(a *fold.Account) {
		if a.ID == id {
			bal = a.AvailableMicros + a.HeldMicros
		}
	})
	if prevClosing != bal {
		t.Fatalf("last closing %d, the fold's available + held %d", prevClosing, bal)
	}

	// An edited export fails Check.
	x, _ := finance.NewExport(journal, id, t0.Format(finance.MonthLayout), now)
	x.Lines[0].AmountMicros++
	if err := x.Check(); err == nil {
		t.Fatal("Check passed an export with an altered line")
	}
	if _, err := finance.NewExport(journal, id, "2300-01", now); err == nil || !strings.Contains(err.Error(), "2300-01") {
		t.Fatalf("far-future month: %v", err)
	}
}

// checkCSVMatchesJSON parses both renderings of x and compares lines and totals.
func checkCSVMatchesJSON(t *testing.T, x *finance.Export) {
	t.Helper()
	var jb, cb bytes.Buffer
	if err := x.WriteJSON(&jb); err != nil {
		t.Fatal(err)
	}
	if err := x.WriteCSV(&cb); err != nil {
		t.Fatal(err)
	}
	var fromJSON finance.Export
	if err := json.Unmarshal(jb.Bytes(), &fromJSON); err != nil {
		t.Fatal(err)
	}
	if err := fromJSON.Check(); err != nil {
		t.Fatalf("the JSON export does not add up: %v", err)
	}
	rows, err := csv.NewReader(&cb).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	amount := func(r []string) int64 {
		v, err := strconv.ParseInt(r[col["amount_micros"]], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	var lines int
	byLedger, totLedger, byKind, totKind := map[string]int64{}, map[string]int64{}, map[string]int64{}, map[string]int64{}
	byProject, totProject := map[string]int64{}, map[string]int64{}
	var opening, closing int64
	for _, r := range rows[1:] {
		switch r[col["row"]] {
		case "line":
			l := fromJSON.Lines[lines]
			if r[col["entry_id"]] != l.EntryID || amount(r) != l.AmountMicros || r[col["kind"]] != l.Kind || r[col["request_id"]] != l.RequestID ||
				r[col["project_id"]] != l.ProjectID {
				t.Fatalf("CSV line %d %v, JSON %+v", lines, r, l)
			}
			lines++
			byLedger[r[col["ledger_account"]]] += amount(r)
			byKind[r[col["kind"]]+"/"+r[col["ledger_account"]]] += amount(r)
			if p := r[col["project_id"]]; p != "" {
				byProject[p+"/"+r[col["ledger_account"]]] += amount(r)
			}
		case "total_kind":
			totKind[r[col["kind"]]+"/"+r[col["ledger_account"]]] = amount(r)
		case "total_ledger_account":
			totLedger[r[col["ledger_account"]]] = amount(r)
		case "total_project":
			totProject[r[col["project_id"]]+"/"+r[col["ledger_account"]]] = amount(r)
		case "opening":
			opening = amount(r)
		case "closing":
			closing = amount(r)
		default:
			t.Fatalf("unknown row %v", r)
		}
	}
	if lines != len(fromJSON.Lines) || opening != fromJSON.OpeningMicros || closing != fromJSON.ClosingMicros {
		t.Fatalf("CSV: %d lines, opening %d, closing %d; JSON: %d, %d, %d", lines, opening, closing, len(fromJSON.Lines), fromJSON.OpeningMicros, fromJSON.ClosingMicros)
	}
	for _, tot := range fromJSON.TotalsByLedgerAccount {
		k := tot.LedgerAccount
		if byLedger[k] != tot.AmountMicros || totLedger[k] != tot.AmountMicros {
			t.Fatalf("%s: CSV lines sum to %d, CSV total %d, JSON total %d", k, byLedger[k], totLedger[k], tot.AmountMicros)
		}
	}
	for _, tot := range fromJSON.TotalsByKind {
		k := tot.Kind + "/" + tot.LedgerAccount
		if byKind[k] != tot.AmountMicros || totKind[k] != tot.AmountMicros {
			t.Fatalf("%s: CSV lines sum to %d, CSV total %d, JSON total %d", k, byKind[k], totKind[k], tot.AmountMicros)
		}
	}
	for _, tot := range fromJSON.TotalsByProject {
		k := tot.ProjectID + "/" + tot.LedgerAccount
		if byProject[k] != tot.AmountMicros || totProject[k] != tot.AmountMicros {
			t.Fatalf("%s: CSV lines sum to %d, CSV total %d, JSON total %d", k, byProject[k], totProject[k], tot.AmountMicros)
		}
	}
	if len(totLedger) != len(fromJSON.TotalsByLedgerAccount) || len(totKind) != len(fromJSON.TotalsByKind) || len(totProject) != len(fromJSON.TotalsByProject) {
		t.Fatalf("CSV totals %v %v %v, JSON %v %v %v", totLedger, totKind, totProject, fromJSON.TotalsByLedgerAccount, fromJSON.TotalsByKind, fromJSON.TotalsByProject)
	}
}

// TestExportByProject: an organization's export names the project of each line of a funded
// request (JSON and CSV) and totals the lines by project and ledger account, so finance can
// bill each project what its requests cost, although two projects and the organization
// itself all used request id r1; the export still adds up.
func TestExportByProject(t *testing.T) {
	var log []events.Event
	add := func(at time.Time, d events.Data) {
		ev, err := events.NewWithID(events.DerivedID("x", strconv.Itoa(len(log))), "test", at, d)
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, ev)
	}
	req := func(project, id string, hold, cost int64, at time.Time) {
		acct, funder := project, "org"
		if project == "" {
			acct, funder = "org", ""
		}
		add(at, events.RequestStarted{RequestID: id, AccountID: acct, FundingAccountID: funder, Endpoint: "codex.responses", Tier: "plus",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, HoldMicros: hold, EstimateMicros: hold,
			HoldExpiresAt: at.Add(5 * time.Minute), PriceBookVersion: "v1"})
		add(at.Add(time.Second), events.RequestFinished{RequestID: id, AccountID: acct, FundingAccountID: funder, Endpoint: "codex.responses",
			Status: events.StatusSucceeded, CostMicros: cost, PriceBookVersion: "v1"})
	}
	add(t0, events.CreditsGranted{GrantID: "g1", AccountID: "org", AmountMicros: 10_000_000, Source: events.GrantPurchase})
	req("p1", "r1", 500_000, 700_000, t0.Add(time.Minute))
	req("p2", "r1", 500_000, 300_000, t0.Add(2*time.Minute))
	req("", "r1", 100_000, 50_000, t0.Add(3*time.Minute))
	_, journal := foldLog(t, log)
	x, err := finance.NewExport(journal, "org", t0.Format(finance.MonthLayout), t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	checkCSVMatchesJSON(t, x)
	var jb, cb bytes.Buffer
	if err := x.WriteJSON(&jb); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Lines           []map[string]any `json:"lines"`
		TotalsByProject []map[string]any `json:"totals_by_project"`
	}
	if err := json.Unmarshal(jb.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	revenue := map[string]any{}
	for _, l := range doc.Lines {
		if l["ledger_account"] == events.LedgerRevenue {
			revenue[fmt.Sprint(l["project_id"], "/", l["request_id"])] = l["amount_micros"]
		}
	}
	if got, want := fmt.Sprint(revenue), "map[<nil>/r1:50000 p1/r1:700000 p2/r1:300000]"; got != want {
		t.Errorf("JSON revenue lines by project/request %s, want %s", got, want)
	}
	var byProject []string
	for _, tot := range doc.TotalsByProject {
		byProject = append(byProject, fmt.Sprint(tot["project_id"], " ", tot["ledger_account"], " ", tot["amount_micros"], " ", tot["lines"]))
	}
	want := []string{
		"p1 customer.available -700000 2", "p1 customer.held 0 2", "p1 system.revenue 700000 1",
		"p2 customer.available -300000 2", "p2 customer.held 0 2", "p2 system.revenue 300000 1",
	}
	if strings.Join(byProject, "; ") != strings.Join(want, "; ") {
		t.Errorf("totals by project:\n%s\nwant\n%s", strings.Join(byProject, "\n"), strings.Join(want, "\n"))
	}
	if err := x.WriteCSV(&cb); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&cb).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	pc, ok := col["project_id"]
	if !ok {
		t.Fatalf("CSV header %v has no project_id", rows[0])
	}
	csvRevenue := map[string]string{}
	for _, r := range rows[1:] {
		if r[col["row"]] == "line" && r[col["ledger_account"]] == events.LedgerRevenue {
			csvRevenue[r[pc]+"/"+r[col["request_id"]]] = r[col["amount_micros"]]
		}
	}
	if got, want := fmt.Sprint(csvRevenue), "map[/r1:50000 p1/r1:700000 p2/r1:300000]"; got != want {
		t.Errorf("CSV revenue lines by project/request %s, want %s", got, want)
	}
	// The statement's CSV names the projects too.
	st, err := finance.NewStatement(journal, "org", x.From, x.To)
	if err != nil || st.Check() != nil {
		t.Fatalf("statement: %v %v", err, st.Check())
	}
	cb.Reset()
	if err := st.WriteCSV(&cb); err != nil {
		t.Fatal(err)
	}
	if rows, err = csv.NewReader(&cb).ReadAll(); err != nil {
		t.Fatal(err)
	}
	clear(col)
	for i, h := range rows[0] {
		col[h] = i
	}
	clear(csvRevenue)
	for _, r := range rows[1:] {
		if r[col["row"]] == "entry" && r[col["ledger_account"]] == events.LedgerRevenue {
			csvRevenue[r[col["project_id"]]+"/"+r[col["request_id"]]] = r[col["amount_micros"]]
		}
	}
	if got, want := fmt.Sprint(csvRevenue), "map[/r1:50000 p1/r1:700000 p2/r1:300000]"; got != want || col["project_id"] != 10 {
		t.Errorf("statement CSV revenue by project/request %s (project_id column %d), want %s", got, col["project_id"], want)
	}
	// A line moved from one project to the other fails Check.
	for i := range x.Lines {
		if x.Lines[i].ProjectID == "p1" {
			x.Lines[i].ProjectID = "p2"
			break
		}
	}
	if err := x.Check(); err == nil || !strings.Contains(err.Error(), "totals by project") {
		t.Fatalf("Check of an export with a line moved to another project: %v", err)
	}
}
