// Package foldtest holds the fold's test oracles: checks over its published output that the
// fold's own tests and the services' tests built on the fold run, kept out of the production
// package (as net/http/httptest is).
package foldtest

import (
	"errors"
	"fmt"

	"github.com/tallyhq/tally/shared/events"
)

// JournalTotals are the per-account sums of a journal.
type JournalTotals struct {
	Available, Held, Overage int64
}

// CheckJournal checks a journal (the fold's Entry lines as published, Entry.Event): every
// transaction sums to zero, no entry id repeats, each ledger account appears once per
// transaction, and each request (its account, project and request id: two projects funded by
// one account may use the same id) has its hold placed once and released or posted at most
// once (its customer.held lines never go below zero and end at zero unless it is still open).
// It returns the per-account sums of customer.available, customer.held and overage receivable
// (negated: what is owed).
func CheckJournal(lines []events.LedgerEntry) (map[string]JournalTotals, error) {
	var errs []error
	txSum := map[string]int64{}
	seen := map[string]bool{}
	heldByReq := map[string]int64{}
	totals := map[string]JournalTotals{}
	var order []string
	txID := map[string]string{}
	for i := range lines {
		e := &lines[i]
		key := e.CauseEventID + "/" + e.LedgerAccount
		if seen[key] {
			errs = append(errs, fmt.Errorf("entry %s: duplicate line (cause %s, account %s)", e.EntryID, e.CauseEventID, e.LedgerAccount))
		}
		seen[key] = true
		if _, ok := txSum[e.CauseEventID]; !ok {
			order = append(order, e.CauseEventID)
			txID[e.CauseEventID] = e.TransactionID
		}
		txSum[e.CauseEventID] += e.AmountMicros
		t := totals[e.AccountID]
		switch e.LedgerAccount {
		case events.LedgerAvailable:
			t.Available += e.AmountMicros
		case events.LedgerHeld:
			t.Held += e.AmountMicros
			if e.RequestID != "" {
				k := e.AccountID + "/" + e.ProjectID + "/" + e.RequestID // a request is its project's (or its account's own)
				heldByReq[k] += e.AmountMicros
				if heldByReq[k] < 0 {
					errs = append(errs, fmt.Errorf("request %s: hold released or posted more than once", k))
				}
			}
		case events.LedgerOverageReceivable:
			t.Overage -= e.AmountMicros
		}
		totals[e.AccountID] = t
	}
	for _, c := range order {
		if txSum[c] != 0 {
			errs = append(errs, fmt.Errorf("transaction %s (cause %s): sums to %d", txID[c], c, txSum[c]))
		}
	}
	return totals, errors.Join(errs...)
}
