package finance

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// MonthLayout is how a month is written: "2026-11".
const MonthLayout = "2006-01"

// ParseMonth returns the calendar month s ("YYYY-MM", UTC) as [from, to). A month before
// events.MinTime's, one that ends at or after events.MaxTime, or one that has not begun at now
// is an error: no journal line can be dated in it.
func ParseMonth(s string, now time.Time) (from, to time.Time, err error) {
	t, err := time.Parse(MonthLayout, s)
	if err != nil || len(s) != len(MonthLayout) {
		return from, to, fmt.Errorf("month %q: want YYYY-MM, e.g. 2026-11", s)
	}
	from = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	to = from.AddDate(0, 1, 0)
	switch {
	case from.Before(events.MinTime) || to.After(events.MaxTime):
		return from, to, fmt.Errorf("month %s: outside the ledger's time range [%s, %s)", s,
			events.MinTime.Format(MonthLayout), events.MaxTime.Format(MonthLayout))
	case from.After(now):
		return from, to, fmt.Errorf("month %s has not begun (now is %s UTC)", s, now.UTC().Format(time.RFC3339))
	}
	return from, to, nil
}

// ExportLine is one journal line of an export.
type ExportLine struct {
	Time          time.Time `json:"time"`
	TransactionID string    `json:"transaction_id"`
	EntryID       string    `json:"entry_id"`
	Kind          string    `json:"kind"`
	LedgerAccount string    `json:"ledger_account"`
	AmountMicros  int64     `json:"amount_micros"`
	RequestID     string    `json:"request_id,omitempty"`
	// ProjectID is the project (a funded account) whose request caused the line, on the
	// lines of the organization that funds it; absent otherwise.
	ProjectID string `json:"project_id,omitempty"`
	GrantID   string `json:"grant_id,omitempty"`
}

// Total is the sum of the export's lines on one ledger account, of one kind of transaction
// (TotalsByKind) or of any kind (TotalsByLedgerAccount, Kind ""). A kind's lines alone sum to
// zero (each transaction does), so a kind is totalled per ledger account: the charges'
// revenue line is what the month's usage cost, the grants' customer.available line what was
// granted, the breakage line what expired. TotalsByProject total the lines of each project's
// requests per ledger account (ProjectID set, Kind ""): a project's revenue line is what its
// requests cost the organization that month.
type Total struct {
	ProjectID     string `json:"project_id,omitempty"`
	Kind          string `json:"kind,omitempty"`
	LedgerAccount string `json:"ledger_account"`
	Lines         int    `json:"lines"`
	AmountMicros  int64  `json:"amount_micros"`
}

// Export is an account's usage and charges for one calendar month (UTC): every journal line
// of the account effective in [From, To), in effective time then entry id order (the
// statement's order), and their totals by kind and by ledger account. Opening and closing
// are the statement's customer balance (available + held) at From and To, so
// ClosingMicros = OpeningMicros + the customer.available and customer.held totals, and the
// ledger-account totals sum to zero (double entry).
type Export struct {
	AccountID             string       `json:"account_id"`
	Month                 string       `json:"month"`
	From                  time.Time    `json:"from"`
	To                    time.Time    `json:"to"`
	OpeningMicros         int64        `json:"opening_micros"`
	ClosingMicros         int64        `json:"closing_micros"`
	Lines                 []ExportLine `json:"lines"`
	TotalsByKind          []Total      `json:"totals_by_kind"`
	TotalsByLedgerAccount []Total      `json:"totals_by_ledger_account"`
	// TotalsByProject are the totals of the lines of funded requests by project and ledger
	// account, in project then ledger account order; absent when the account funds no
	// project's request in the month.
	TotalsByProject []Total `json:"totals_by_project,omitempty"`
}

// NewExport builds the export of account for month ("YYYY-MM", parsed with ParseMonth at now)
// from the journal (any order, deduplicated as ReadJournal returns it), through the same
// statement the statement command prints; the statement is checked first.
func NewExport(journal []events.LedgerEntry, account, month string, now time.Time) (*Export, error) {
	from, to, err := ParseMonth(month, now)
	if err != nil {
		return nil, fmt.Errorf("finance: export: %w", err)
	}
	st, err := NewStatement(journal, account, from, to)
	if err != nil {
		return nil, err
	}
	if err := st.Check(); err != nil {
		return nil, err
	}
	x := &Export{AccountID: account, Month: from.Format(MonthLayout), From: from, To: to,
		OpeningMicros: st.OpeningMicros, ClosingMicros: st.ClosingMicros, Lines: make([]ExportLine, 0, len(st.Entries))}
	for _, e := range st.Entries {
		x.Lines = append(x.Lines, ExportLine{Time: e.EffectiveAt.UTC(), TransactionID: e.TransactionID, EntryID: e.EntryID,
			Kind: e.Kind, LedgerAccount: e.LedgerAccount, AmountMicros: e.AmountMicros, RequestID: e.RequestID, ProjectID: e.ProjectID,
			GrantID: e.GrantID})
	}
	x.TotalsByKind, x.TotalsByLedgerAccount, x.TotalsByProject = totals(x.Lines)
	return x, nil
}

// totals sums lines by kind and ledger account, by ledger account, and (the lines that
// name a project) by project and ledger account, sorted; byProject is nil without such lines.
func totals(lines []ExportLine) (byKind, byLedger, byProject []Total) {
	const (
		byKindKey = iota
		byLedgerKey
		byProjectKey
	)
	sum := func(by int) []Total {
		type key struct{ project, kind, ledger string }
		m := map[key]*Total{}
		for i := range lines {
			k := key{ledger: lines[i].LedgerAccount}
			switch by {
			case byKindKey:
				k.kind = lines[i].Kind
			case byProjectKey:
				if lines[i].ProjectID == "" {
					continue
				}
				k.project = lines[i].ProjectID
			}
			t := m[k]
			if t == nil {
				t = &Total{ProjectID: k.project, Kind: k.kind, LedgerAccount: k.ledger}
				m[k] = t
			}
			t.Lines++
			t.AmountMicros += lines[i].AmountMicros
		}
		if by == byProjectKey && len(m) == 0 {
			return nil
		}
		out := make([]Total, 0, len(m))
		for _, t := range m {
			out = append(out, *t)
		}
		sort.Slice(out, func(i, j int) bool {
			a, b := &out[i], &out[j]
			if a.ProjectID != b.ProjectID {
				return a.ProjectID < b.ProjectID
			}
			if a.Kind != b.Kind {
				return a.Kind < b.Kind
			}
			return a.LedgerAccount < b.LedgerAccount
		})
		return out
	}
	return sum(byKindKey), sum(byLedgerKey), sum(byProjectKey)
}

// Check verifies that the totals are the sums of the lines, that the ledger-account totals
// sum to zero, and that closing = opening + the customer ledger accounts' totals; it catches
// an edited export (e.g. its JSON).
func (x *Export) Check() error {
	var errs []error
	byKind, byLedger, byProject := totals(x.Lines)
	if fmt.Sprint(byKind) != fmt.Sprint(x.TotalsByKind) {
		errs = append(errs, fmt.Errorf("totals by kind %v, the lines sum to %v", x.TotalsByKind, byKind))
	}
	if fmt.Sprint(byProject) != fmt.Sprint(x.TotalsByProject) {
		errs = append(errs, fmt.Errorf("totals by project %v, the lines sum to %v", x.TotalsByProject, byProject))
	}
	if fmt.Sprint(byLedger) != fmt.Sprint(x.TotalsByLedgerAccount) {
		errs = append(errs, fmt.Errorf("totals by ledger account %v, the lines sum to %v", x.TotalsByLedgerAccount, byLedger))
	}
	var all int64
	customerSum := x.OpeningMicros
	for _, t := range byLedger {
		all += t.AmountMicros
		if t.LedgerAccount == events.LedgerAvailable || t.LedgerAccount == events.LedgerHeld {
			customerSum += t.AmountMicros
		}
	}
	if all != 0 {
		errs = append(errs, fmt.Errorf("the lines sum to %d, not 0", all))
	}
	if customerSum != x.ClosingMicros {
		errs = append(errs, fmt.Errorf("opening %d + customer lines = %d, closing %d", x.OpeningMicros, customerSum, x.ClosingMicros))
	}
	for _, l := range x.Lines {
		if l.Time.Before(x.From) || !l.Time.Before(x.To) {
			errs = append(errs, fmt.Errorf("line %s dated %s, outside the month", l.EntryID, l.Time.Format(time.RFC3339Nano)))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("finance: export of %s for %s: %w", x.AccountID, x.Month, errors.Join(errs...))
	}
	return nil
}

// WriteJSON writes the export as one JSON document.
func (x *Export) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(x)
}

// ExportCSVHeader is the export's CSV header. The row column says what a row is: "opening",
// "line" (one per journal line), "total_kind" (a kind and ledger account), "total_ledger_account"
// (a ledger account), "total_project" (a project and ledger account; the totals give the line
// count in lines), and "closing". project_id, last so that the columns before it keep their
// places, is the project of a funded request's line and of a total_project row.
var ExportCSVHeader = []string{"row", "time", "transaction_id", "entry_id", "kind", "ledger_account", "amount_micros", "request_id", "grant_id", "lines", "project_id"}

// WriteCSV writes the header, an opening row, one row per line, the totals by kind, the
// totals by ledger account, the totals by project and a closing row (the balances in
// amount_micros). Text cells go through csvText.
func (x *Export) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	i64 := func(v int64) string { return strconv.FormatInt(v, 10) }
	_ = cw.Write(ExportCSVHeader)
	_ = cw.Write([]string{"opening", ts(x.From), "", "", "", "", i64(x.OpeningMicros), "", "", "", ""})
	for _, l := range x.Lines {
		_ = cw.Write([]string{"line", ts(l.Time), csvText(l.TransactionID), csvText(l.EntryID), csvText(l.Kind), csvText(l.LedgerAccount),
			i64(l.AmountMicros), csvText(l.RequestID), csvText(l.GrantID), "1", csvText(l.ProjectID)})
	}
	for _, t := range x.TotalsByKind {
		_ = cw.Write([]string{"total_kind", "", "", "", t.Kind, t.LedgerAccount, i64(t.AmountMicros), "", "", strconv.Itoa(t.Lines), ""})
	}
	for _, t := range x.TotalsByLedgerAccount {
		_ = cw.Write([]string{"total_ledger_account", "", "", "", "", t.LedgerAccount, i64(t.AmountMicros), "", "", strconv.Itoa(t.Lines), ""})
	}
	for _, t := range x.TotalsByProject {
		_ = cw.Write([]string{"total_project", "", "", "", "", t.LedgerAccount, i64(t.AmountMicros), "", "", strconv.Itoa(t.Lines), csvText(t.ProjectID)})
	}
	_ = cw.Write([]string{"closing", ts(x.To), "", "", "", "", i64(x.ClosingMicros), "", "", "", ""})
	cw.Flush()
	return cw.Error()
}
