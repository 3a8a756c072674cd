// Package finance holds the operator's proofs over the ledger: a from-scratch replay of the
// events topic through the same fold, statements from the journal that add up, and a
// reconciliation of the replay against the live ledger (and optionally ClickHouse).
// tallyctl wires these into its statement and reconcile commands.
package finance

import (
	"context"
	"crypto/tls"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/engine"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/backoff"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Balance is one account's figures, to the micro-credit.
type Balance struct {
	AccountID       string `json:"account_id"`
	AvailableMicros int64  `json:"available_micros"`
	HeldMicros      int64  `json:"held_micros"`
	OverageMicros   int64  `json:"overage_micros"`
	// Partition and Offset are the events-topic position of the last event folded for the
	// account (replays only).
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
	Watermark time.Time `json:"watermark"` // the partition's log time at the replay's end
	// NextDueNs is the earliest log time at which time alone changes the account
	// (fold.State.NextDueNs; replays only).
	NextDueNs int64 `json:"next_due_ns"`
}

// Replayed is the result of a replay.
type Replayed struct {
	States      map[int32]*fold.State
	Events      int64 // events folded
	Undecodable int64 // messages skipped (the ledger dead-letters them)
	Entries     []fold.Entry
	// next is, per partition, the offset after the last message read (CatchUp reads on from it).
	next    map[int]int64
	source  replaySource
	entries bool
}

// replaySource is where a replay reads, so that CatchUp can read on.
type replaySource struct {
	brokers []string
	tc      *tls.Config
	topic   string
	cfg     fold.Config
}

// Balances returns every account's balance, sorted by account id.
func (r *Replayed) Balances() []Balance {
	var out []Balance
	for _, s := range r.States {
		s.Accounts(func(a *fold.Account) {
			out = append(out, Balance{AccountID: a.ID, AvailableMicros: a.AvailableMicros, HeldMicros: a.HeldMicros,
				OverageMicros: a.OverageMicros, Partition: s.Partition(), Offset: a.Offset, Watermark: s.Watermark(),
				NextDueNs: s.NextDueNs(a)})
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AccountID < out[j].AccountID })
	return out
}

// Progress is called after each partition's batch with events read so far and the total.
type Progress func(done, total int64)

// Replay reads the events topic from the beginning up to its end at the time of the call,
// folds each partition with a fresh fold.State (in-process, nothing published), and returns
// the final states. keepEntries keeps the journal lines (for tests and statements).
func Replay(ctx context.Context, brokers []string, topics kafkax.Topics, cfg fold.Config, keepEntries bool, progress Progress) (*Replayed, error) {
	return ReplayTLS(ctx, brokers, nil, topics, cfg, keepEntries, progress)
}

// ReplayTLS is Replay over TLS (tc nil = plaintext), for brokers that require it.
func ReplayTLS(ctx context.Context, brokers []string, tc *tls.Config, topics kafkax.Topics, cfg fold.Config, keepEntries bool, progress Progress) (*Replayed, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	total, err := topicSize(ctx, brokers, tc, topics.Events)
	if err != nil {
		return nil, err
	}
	r := &Replayed{States: map[int32]*fold.State{}, next: map[int]int64{}, entries: keepEntries,
		source: replaySource{brokers: brokers, tc: tc, topic: topics.Events, cfg: cfg}}
	if err := r.read(ctx, total, progress); err != nil {
		return nil, err
	}
	return r, nil
}

// CatchUp folds what was appended to the events topic since the replay (or the last CatchUp)
// read it, so that the replay can be compared again with a live ledger that has moved on
// (new events, or the ledger's clock ticks on idle partitions).
func (r *Replayed) CatchUp(ctx context.Context) error { return r.read(ctx, 0, nil) }

func (r *Replayed) read(ctx context.Context, total int64, progress Progress) error {
	var out fold.Output
	var done int64
	err := engine.ReadFromTLS(ctx, r.source.brokers, r.source.tc, r.source.topic, r.next, func(m kafka.Message) error {
		done++
		if progress != nil && done%10_000 == 0 {
			progress(done, total)
		}
		r.next[m.Partition] = m.Offset + 1
		st := r.States[int32(m.Partition)]
		if st == nil {
			st = fold.New(r.source.cfg, int32(m.Partition))
			r.States[int32(m.Partition)] = st
		}
		ev, err := events.Decode(m.Value)
		if err != nil {
			r.Undecodable++
			return nil
		}
		st.Apply(fold.Input{Offset: m.Offset, Event: &ev, RecordTimeNs: engine.RecordTimeNs(m)}, &out)
		r.Events++
		if r.entries {
			r.Entries = append(r.Entries, out.Entries...)
		}
		out.Reset()
		return nil
	})
	if progress != nil {
		progress(done, total)
	}
	if err != nil {
		return fmt.Errorf("finance: replay %s: %w", r.source.topic, err)
	}
	return nil
}

func topicSize(ctx context.Context, brokers []string, tc *tls.Config, topic string) (int64, error) {
	d := kafkax.Dialer(tc)
	conn, err := d.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return 0, fmt.Errorf("finance: dial: %w", err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return 0, fmt.Errorf("finance: partitions of %s: %w", topic, err)
	}
	var n int64
	for _, p := range parts {
		lc, err := d.DialLeader(ctx, "tcp", brokers[0], topic, p.ID)
		if err != nil {
			return 0, err
		}
		f, l, err := lc.ReadOffsets()
		lc.Close()
		if err != nil {
			return 0, err
		}
		n += l - f
	}
	return n, nil
}

// ReadJournal reads the journal topic to its current end and returns the ledger.entry lines,
// deduplicated by entry id (a replay after a crash re-emits lines with the same ids). A
// repeated id with different content is an error: it would mean a non-deterministic fold.
func ReadJournal(ctx context.Context, brokers []string, topics kafkax.Topics) ([]events.LedgerEntry, error) {
	return ReadJournalTLS(ctx, brokers, nil, topics)
}

// ReadJournalTLS is ReadJournal over TLS (tc nil = plaintext).
func ReadJournalTLS(ctx context.Context, brokers []string, tc *tls.Config, topics kafkax.Topics) ([]events.LedgerEntry, error) {
	seen := map[string]events.LedgerEntry{}
	var out []events.LedgerEntry
	err := engine.ReadAllTLS(ctx, brokers, tc, topics.Journal, func(m kafka.Message) error {
		ev, err := events.Decode(m.Value)
		if err != nil {
			return fmt.Errorf("finance: journal %d/%d: %w", m.Partition, m.Offset, err)
		}
		le, ok := ev.Payload.(events.LedgerEntry)
		if !ok {
			return nil // request.expired
		}
		var err2 error
		out, err2 = addJournalLine(seen, out, le)
		return err2
	})
	return out, err
}

// addJournalLine appends le to out unless its entry id was seen: a copy with the same content
// is dropped, one with other content is an error (a non-deterministic fold). The one
// exception is a copy that names the project an earlier copy lacked: a funded request's line
// published before the ledger named projects and re-emitted after (a crash across the
// upgrade); the line with the project replaces it.
func addJournalLine(seen map[string]events.LedgerEntry, out []events.LedgerEntry, le events.LedgerEntry) ([]events.LedgerEntry, error) {
	prev, dup := seen[le.EntryID]
	if !dup {
		seen[le.EntryID] = le
		return append(out, le), nil
	}
	if prev == le {
		return out, nil
	}
	if withProject := prev; prev.ProjectID == "" && le.ProjectID != "" {
		withProject.ProjectID = le.ProjectID
		if withProject == le {
			seen[le.EntryID] = le
			for i := range out {
				if out[i].EntryID == le.EntryID {
					out[i] = le
				}
			}
			return out, nil
		}
	}
	return out, fmt.Errorf("finance: entry %s re-emitted with different content", le.EntryID)
}

// Statement is an account's journal over [From, To): the opening balance, every entry and the
// closing balance of its customer accounts (available + held). Closing = opening + Σ entries.
type Statement struct {
	AccountID     string               `json:"account_id"`
	From          time.Time            `json:"from"`
	To            time.Time            `json:"to"`
	OpeningMicros int64                `json:"opening_micros"`
	ClosingMicros int64                `json:"closing_micros"`
	Entries       []events.LedgerEntry `json:"entries"`
}

func customer(le *events.LedgerEntry) bool {
	return le.LedgerAccount == events.LedgerAvailable || le.LedgerAccount == events.LedgerHeld
}

// NewStatement builds the statement of account over [from, to) from journal lines (any
// order). Only customer lines (customer.available, customer.held) count in the balance;
// every line of the account in the period is listed, in effective time then entry id order.
func NewStatement(journal []events.LedgerEntry, account string, from, to time.Time) (*Statement, error) {
	if !to.After(from) {
		return nil, errors.New("finance: statement: to must be after from")
	}
	s := &Statement{AccountID: account, From: from, To: to, Entries: []events.LedgerEntry{}}
	for i := range journal {
		le := &journal[i]
		if le.AccountID != account {
			continue
		}
		switch {
		case le.EffectiveAt.Before(from):
			if customer(le) {
				s.OpeningMicros += le.AmountMicros
			}
		case le.EffectiveAt.Before(to):
			s.Entries = append(s.Entries, *le)
		}
	}
	sort.Slice(s.Entries, func(i, j int) bool {
		a, b := &s.Entries[i], &s.Entries[j]
		if !a.EffectiveAt.Equal(b.EffectiveAt) {
			return a.EffectiveAt.Before(b.EffectiveAt)
		}
		return a.EntryID < b.EntryID
	})
	s.ClosingMicros = s.OpeningMicros
	for i := range s.Entries {
		if customer(&s.Entries[i]) {
			s.ClosingMicros += s.Entries[i].AmountMicros
		}
	}
	return s, nil
}

// Check verifies the statement against what building it does not compute: the double
// entry. Every transaction of the account moves money between its ledger accounts and sums
// to zero, with all its lines in the period (they share one effective time), so a statement
// built from an altered or incomplete journal (a line's amount changed, a line lost or
// duplicated under another id) fails it. It also checks that closing = opening + Σ customer
// lines, which catches an edited statement (e.g. its JSON).
func (s *Statement) Check() error {
	var errs []error
	txSum := map[string]int64{}
	var order []string
	sum := s.OpeningMicros
	for i := range s.Entries {
		e := &s.Entries[i]
		if _, ok := txSum[e.TransactionID]; !ok {
			order = append(order, e.TransactionID)
		}
		txSum[e.TransactionID] += e.AmountMicros
		if customer(e) {
			sum += e.AmountMicros
		}
	}
	for _, tx := range order {
		if txSum[tx] != 0 {
			errs = append(errs, fmt.Errorf("transaction %s sums to %d, not 0", tx, txSum[tx]))
		}
	}
	if sum != s.ClosingMicros {
		errs = append(errs, fmt.Errorf("opening %d + entries = %d, closing %d", s.OpeningMicros, sum, s.ClosingMicros))
	}
	if len(errs) > 0 {
		return fmt.Errorf("finance: statement of %s: %w", s.AccountID, errors.Join(errs...))
	}
	return nil
}

// WriteJSON writes the statement as one JSON document.
func (s *Statement) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// csvText makes a text cell safe to open in a spreadsheet: ids come from clients and admins,
// and one that starts with '=', '+', '-', '@', a tab or a carriage return would be read as a
// formula, so it is written with a leading apostrophe (OWASP's CSV injection advice). Amount
// and time cells are written as they are.
func csvText(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// WriteCSV writes a header, an "opening" row, one row per entry with the running customer
// balance, and a "closing" row. project_id, the project of a funded request's line, is the
// last column so that the columns before it keep their places. Text cells go through csvText.
func (s *Statement) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"row", "effective_at", "entry_id", "transaction_id", "kind", "ledger_account", "request_id", "grant_id", "amount_micros", "balance_micros", "project_id"})
	_ = cw.Write([]string{"opening", s.From.UTC().Format(time.RFC3339Nano), "", "", "", "", "", "", "", strconv.FormatInt(s.OpeningMicros, 10), ""})
	bal := s.OpeningMicros
	for _, e := range s.Entries {
		if customer(&e) {
			bal += e.AmountMicros
		}
		_ = cw.Write([]string{"entry", e.EffectiveAt.UTC().Format(time.RFC3339Nano), csvText(e.EntryID), csvText(e.TransactionID),
			csvText(e.Kind), csvText(e.LedgerAccount), csvText(e.RequestID), csvText(e.GrantID),
			strconv.FormatInt(e.AmountMicros, 10), strconv.FormatInt(bal, 10), csvText(e.ProjectID)})
	}
	_ = cw.Write([]string{"closing", s.To.UTC().Format(time.RFC3339Nano), "", "", "", "", "", "", "", strconv.FormatInt(s.ClosingMicros, 10), ""})
	cw.Flush()
	return cw.Error()
}

// Difference is one disagreement found by Reconcile.
type Difference struct {
	AccountID string `json:"account_id"`
	Source    string `json:"source"` // "live" or "clickhouse"
	Field     string `json:"field"`
	Replay    int64  `json:"replay_micros"`
	Other     int64  `json:"other_micros"`
}

// Report is the outcome of Reconcile; OK when Differences is empty.
type Report struct {
	Accounts int `json:"accounts"`
	// Moved counts accounts the live ledger has folded past the replay's end (events, or a
	// later partition clock that has passed one of the account's expiries or renewal, that
	// arrived after the replay started); they are not compared. CatchUp and compare again.
	Moved       int          `json:"moved"`
	Events      int64        `json:"events"`
	Differences []Difference `json:"differences"`
}

// OK reports whether everything agreed.
func (r *Report) OK() bool { return len(r.Differences) == 0 }

// LiveFunc fetches the live ledger's view of an account (false = unknown to the ledger).
type LiveFunc func(ctx context.Context, accountID string) (view.Account, bool, error)

// ClickHouseSums returns Σ amount_micros of the journal per account for customer.available
// and customer.held lines (nil to skip the ClickHouse check).
type ClickHouseSums func(ctx context.Context) (map[string]Balance, error)

// ReconcileLive is Reconcile against a live ledger (and ClickHouse) that run on while the
// replay reads: a ledger a moment ahead (new events, or a clock tick past one of the
// account's expiries) is not compared, one a moment behind differs. While that is so, it
// pauses, reads on what was appended (CatchUp) and compares again, at most rounds times in
// all, and returns the last report.
func ReconcileLive(ctx context.Context, replay *Replayed, live LiveFunc, chSums ClickHouseSums, rounds int, pause time.Duration) (*Report, error) {
	for round := 1; ; round++ {
		rep, err := Reconcile(ctx, replay, live, chSums)
		if err != nil || (rep.OK() && rep.Moved == 0) || round >= rounds {
			return rep, err
		}
		if !backoff.Sleep(ctx, pause) {
			return nil, ctx.Err()
		}
		if err := replay.CatchUp(ctx); err != nil {
			return nil, err
		}
	}
}

// Reconcile compares every replayed account with the live ledger and, when chSums is not
// nil, with ClickHouse's sums of the journal.
func Reconcile(ctx context.Context, replay *Replayed, live LiveFunc, chSums ClickHouseSums) (*Report, error) {
	rep := &Report{Events: replay.Events, Differences: []Difference{}}
	var ch map[string]Balance
	if chSums != nil {
		var err error
		if ch, err = chSums(ctx); err != nil {
			return nil, fmt.Errorf("finance: clickhouse sums: %w", err)
		}
	}
	for _, b := range replay.Balances() {
		rep.Accounts++
		if live != nil {
			v, ok, err := live(ctx, b.AccountID)
			if err != nil {
				return nil, fmt.Errorf("finance: live %s: %w", b.AccountID, err)
			}
			switch {
			case !ok:
				rep.Differences = append(rep.Differences, Difference{AccountID: b.AccountID, Source: "live", Field: "missing"})
			case v.Position.Offset > b.Offset || (v.Position.Watermark.After(b.Watermark) && b.NextDueNs < v.Position.Watermark.UnixNano()):
				// The live ledger has seen more of the log: newer events for the account, or a
				// later clock that has passed one of its expiries or its renewal since. A later
				// clock alone (the ledger's ticks on an idle partition) changes nothing due
				// after it: such an account is compared.
				rep.Moved++
			default:
				diff(rep, b.AccountID, "live", "offset", b.Offset, v.Position.Offset)
				diff(rep, b.AccountID, "live", "available", b.AvailableMicros, v.AvailableMicros)
				diff(rep, b.AccountID, "live", "held", b.HeldMicros, v.HeldMicros)
				diff(rep, b.AccountID, "live", "overage", b.OverageMicros, v.OverageMicros)
			}
		}
		if ch != nil {
			c := ch[b.AccountID]
			diff(rep, b.AccountID, "clickhouse", "available", b.AvailableMicros, c.AvailableMicros)
			diff(rep, b.AccountID, "clickhouse", "held", b.HeldMicros, c.HeldMicros)
		}
	}
	return rep, nil
}

func diff(rep *Report, id, src, field string, a, b int64) {
	if a != b {
		rep.Differences = append(rep.Differences, Difference{AccountID: id, Source: src, Field: field, Replay: a, Other: b})
	}
}

// HTTPLive returns a LiveFunc over the ledger's GET /v1/accounts/{id} at baseURL with an
// admin token.
func HTTPLive(client *http.Client, baseURL, adminToken string) LiveFunc {
	return func(ctx context.Context, id string) (view.Account, bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/v1/accounts/"+url.PathEscape(id), nil)
		if err != nil {
			return view.Account{}, false, err
		}
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := client.Do(req)
		if err != nil {
			return view.Account{}, false, err
		}
		defer resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusNotFound:
			return view.Account{}, false, nil
		default:
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			return view.Account{}, false, fmt.Errorf("GET account %s: %s: %s", id, resp.Status, b)
		}
		var v view.Account
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&v); err != nil {
			return view.Account{}, false, fmt.Errorf("GET account %s: decode: %w", id, err)
		}
		return v, true, nil
	}
}
