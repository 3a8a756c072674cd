package engine

import (
	"time"

	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/shared/events"
)

// journal keeps the most recent journal lines per account for the entries API: at most
// perAccount lines for each of at most accountsMax accounts (an arbitrary account is
// evicted beyond that). It starts empty at each restore: the full journal is the journal
// topic (and ClickHouse).
type journal struct {
	perAccount, accountsMax int
	accts                   map[string]*lines
}

type lines struct {
	next uint64 // sequence number of the next line
	buf  []line
}

// line is a journal line kept compact: the account is the map key, the entry and
// transaction ids are derived again from the cause when a page is served, and ledgerAccount
// and kind are the fold's constants. It is 128 bytes with 7 pointers, against an
// events.LedgerEntry's 176 bytes and 10 pointers, which the garbage collector scans on every
// cycle (up to LEDGER_JOURNAL_ACCOUNTS_MAX × LEDGER_JOURNAL_PER_ACCOUNT lines).
type line struct {
	cause, requestID, projectID, grantID string
	ledgerAccount, kind                  string
	amountMicros                         int64
	at                                   time.Time // UTC
}

func (l *line) entry(account string) events.LedgerEntry {
	return events.LedgerEntry{
		EntryID: events.DerivedID(l.cause, l.ledgerAccount), TransactionID: fold.TransactionID(l.cause),
		AccountID: account, LedgerAccount: l.ledgerAccount, AmountMicros: l.amountMicros, Kind: l.kind,
		CauseEventID: l.cause, RequestID: l.requestID, ProjectID: l.projectID, GrantID: l.grantID, EffectiveAt: l.at,
	}
}

func newJournal(perAccount, accountsMax int) *journal {
	return &journal{perAccount: perAccount, accountsMax: accountsMax, accts: map[string]*lines{}}
}

func (j *journal) add(entries []fold.Entry) {
	if j.perAccount == 0 {
		return
	}
	for i := range entries {
		en := &entries[i]
		l := j.accts[en.AccountID]
		if l == nil {
			if len(j.accts) >= j.accountsMax {
				for k := range j.accts {
					delete(j.accts, k)
					break
				}
			}
			l = &lines{}
			j.accts[en.AccountID] = l
		}
		ln := line{cause: en.Cause, requestID: en.RequestID, projectID: en.ProjectID, grantID: en.GrantID, ledgerAccount: en.LedgerAccount,
			kind: en.Kind, amountMicros: en.AmountMicros, at: en.At.UTC()}
		if len(l.buf) < j.perAccount {
			l.buf = append(l.buf, ln)
		} else {
			l.buf[l.next%uint64(j.perAccount)] = ln
		}
		l.next++
	}
}

// Line is one cached journal line with its sequence number (the paging cursor).
type Line struct {
	Seq   uint64
	Entry events.LedgerEntry
}

// page returns lines with Seq > after, oldest first, filtered by fn, at most limit.
func (j *journal) page(account string, after uint64, limit int, keep func(*events.LedgerEntry) bool) (out []Line, more bool) {
	l := j.accts[account]
	if l == nil {
		return nil, false
	}
	n := uint64(len(l.buf))
	for seq := l.next - n; seq < l.next; seq++ {
		if seq < after {
			continue
		}
		e := l.buf[seq%uint64(j.perAccount)].entry(account)
		if !keep(&e) {
			continue
		}
		if len(out) == limit {
			return out, true
		}
		out = append(out, Line{Seq: seq + 1, Entry: e})
	}
	return out, false
}
