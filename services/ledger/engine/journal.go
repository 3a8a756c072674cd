package engine

import "github.com/tallyhq/tally/shared/events"

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
	buf  []events.LedgerEntry
}

func newJournal(perAccount, accountsMax int) *journal {
	return &journal{perAccount: perAccount, accountsMax: accountsMax, accts: map[string]*lines{}}
}

func (j *journal) add(entries []events.LedgerEntry) {
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
		if len(l.buf) < j.perAccount {
			l.buf = append(l.buf, *en)
		} else {
			l.buf[l.next%uint64(j.perAccount)] = *en
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
		e := &l.buf[seq%uint64(j.perAccount)]
		if !keep(e) {
			continue
		}
		if len(out) == limit {
			return out, true
		}
		out = append(out, Line{Seq: seq + 1, Entry: *e})
	}
	return out, false
}
