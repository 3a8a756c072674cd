package chstore

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/tallyhq/tally/services/sink/rows"
)

// Store writes batches to usage_events and ledger_entries and keeps the sink's intents.
type Store struct {
	conn    clickhouse.Conn
	timeout time.Duration
}

var _ rows.Storage = (*Store)(nil)

// NewStore wraps an open connection; timeout bounds each insert or query.
func NewStore(conn clickhouse.Conn, timeout time.Duration) *Store {
	return &Store{conn: conn, timeout: timeout}
}

// Conn is the underlying connection.
func (s *Store) Conn() clickhouse.Conn { return s.conn }

// dedupCtx carries the settings of every batch insert: the token, and its propagation to the
// materialized views so the rollups do not count a re-sent batch twice; and
// optimize_on_insert=0, which skips the Replacing/Aggregating/Summing merge of each inserted
// block (a sort-and-fold pass per table and per view, about 14% of the engine's time per
// row, measured). Every reader already folds at read time (FINAL, GROUP BY, -Merge), so the
// answers do not change; background merges fold the parts as before.
func dedupCtx(ctx context.Context, token string) context.Context {
	return clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
		"insert_deduplicate":                                 1,
		"insert_deduplication_token":                         token,
		"deduplicate_blocks_in_dependent_materialized_views": 1,
		"optimize_on_insert":                                 0,
	}))
}

// BatchInsert writes b's usage rows and ledger rows, each with b.Token().
func (s *Store) BatchInsert(ctx context.Context, b *rows.Batch) error {
	tok := b.Token()
	if len(b.Usage) > 0 {
		if err := s.insertUsage(ctx, tok, b.Usage); err != nil {
			return fmt.Errorf("chstore: insert usage_events %s: %w", b, err)
		}
	}
	if len(b.Ledger) > 0 {
		if err := s.insertLedger(ctx, tok, b.Ledger); err != nil {
			return fmt.Errorf("chstore: insert ledger_entries %s: %w", b, err)
		}
	}
	return nil
}

const usageInsert = `INSERT INTO usage_events (event_id, type, time, source, account_id, request_id, key_id,
client_addr, endpoint, model, tier, priority, funding, status, reason, estimate_micros, hold_micros,
allowance_micros, cost_micros, amount_micros, hold_expires_at, video_seconds, resolution, tokens_in,
tokens_out, compute_ms, duration_ms, retry_after_ms, score, price_book_version, attrs, kafka_topic,
kafka_partition, kafka_offset, paid_allowance_micros, paid_credits_micros, overage_micros, funding_account_id)`

// interner boxes each distinct string into an interface once. clickhouse-go appends a
// LowCardinality column value by value through reflection, which boxes every string into a
// new interface (one allocation per value); given []any of values boxed once, it boxes
// nothing.
type interner map[string]any

func (in interner) box(v string) any {
	b, ok := in[v]
	if !ok {
		b = v
		in[v] = b
	}
	return b
}

// usageLC are the positions, in insertUsage's strs, of usage_events' LowCardinality columns.
var usageLC = [...]int{1, 2, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17}

func (s *Store) insertUsage(ctx context.Context, tok string, us []*rows.Usage) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	n := len(us)
	var (
		strs  [18][]string // the string columns in the order of s below, but for ...
		lc    [18][]any    // ... the LowCardinality ones (usageLC), boxed once per value
		times [2][]time.Time
		ints  [15][]int64
		score = make([]float64, n)
		attrs = make([]map[string]string, n)
		parts = make([]int32, n)
	)
	for _, j := range usageLC {
		lc[j] = make([]any, n)
	}
	for i := range strs {
		if lc[i] == nil {
			strs[i] = make([]string, n)
		}
	}
	for i := range times {
		times[i] = make([]time.Time, n)
	}
	for i := range ints {
		ints[i] = make([]int64, n)
	}
	lcs := make(interner, 64)
	noAttrs := map[string]string{}
	for i := range us {
		u := us[i]
		s := [...]string{u.EventID, u.Type, u.Source, u.AccountID, u.RequestID, u.KeyID, u.ClientAddr, u.Endpoint,
			u.Model, u.Tier, u.Priority, u.Funding, u.Status, u.Reason, u.Resolution, u.PriceBookVersion, u.Pos.Topic,
			u.FundingAccountID}
		for j, v := range s {
			if lc[j] != nil {
				lc[j][i] = lcs.box(v)
			} else {
				strs[j][i] = v
			}
		}
		times[0][i], times[1][i] = u.Time, u.HoldExpiresAt
		iv := [...]int64{u.EstimateMicros, u.HoldMicros, u.AllowanceMicros, u.CostMicros, u.AmountMicros,
			u.VideoSeconds, u.TokensIn, u.TokensOut, u.ComputeMs, u.DurationMs, u.RetryAfterMs, u.Pos.Offset,
			u.PaidAllowanceMicros, u.PaidCreditsMicros, u.OverageMicros}
		for j, v := range iv {
			ints[j][i] = v
		}
		score[i], parts[i] = u.Score, u.Pos.Partition
		if u.Attrs == nil {
			attrs[i] = noAttrs // read only
		} else {
			attrs[i] = u.Attrs
		}
	}
	return s.sendColumns(ctx, tok, usageInsert, []any{
		strs[0], lc[1], times[0], lc[2], strs[3], strs[4], strs[5], // event_id..key_id
		strs[6], lc[7], lc[8], lc[9], lc[10], lc[11], lc[12], strs[13], // client_addr..reason
		ints[0], ints[1], ints[2], ints[3], ints[4], times[1], // estimate..hold_expires_at
		ints[5], lc[14], ints[6], ints[7], ints[8], ints[9], ints[10], // video..retry_after
		score, lc[15], attrs, lc[16], parts, ints[11],
		ints[12], ints[13], ints[14], // paid_allowance..overage (0010)
		lc[17], // funding_account_id (0011)
	})
}

// sendColumns inserts one batch given column by column (each a slice, in the order of
// query's columns), with the deduplication settings of token.
func (s *Store) sendColumns(ctx context.Context, token, query string, cols []any) error {
	b, err := s.conn.PrepareBatch(dedupCtx(ctx, token), query, driver.WithReleaseConnection())
	if err != nil {
		return err
	}
	defer func() { _ = b.Abort() }()
	for i, c := range cols {
		if err := b.Column(i).Append(c); err != nil {
			return fmt.Errorf("column %d: %w", i, err)
		}
	}
	return b.Send()
}

const ledgerInsert = `INSERT INTO ledger_entries (entry_id, transaction_id, account_id, ledger_account,
amount_micros, kind, cause_event_id, request_id, grant_id, effective_at, event_id, kafka_topic,
kafka_partition, kafka_offset, project_id)`

func (s *Store) insertLedger(ctx context.Context, tok string, ls []*rows.Ledger) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	n := len(ls)
	var (
		strs    [8][]string // entry_id, transaction_id, account_id, cause_event_id, request_id, grant_id, event_id, project_id
		lc      [3][]any    // ledger_account, kind, kafka_topic (LowCardinality)
		amounts = make([]int64, n)
		offsets = make([]int64, n)
		parts   = make([]int32, n)
		at      = make([]time.Time, n)
	)
	for i := range strs {
		strs[i] = make([]string, n)
	}
	for i := range lc {
		lc[i] = make([]any, n)
	}
	lcs := make(interner, 16)
	for i, l := range ls {
		s := [...]string{l.EntryID, l.TransactionID, l.AccountID, l.CauseEventID, l.RequestID, l.GrantID, l.EventID, l.ProjectID}
		for j, v := range s {
			strs[j][i] = v
		}
		lc[0][i], lc[1][i], lc[2][i] = lcs.box(l.LedgerAccount), lcs.box(l.Kind), lcs.box(l.Pos.Topic)
		amounts[i], offsets[i], parts[i], at[i] = l.AmountMicros, l.Pos.Offset, l.Pos.Partition, l.EffectiveAt
	}
	return s.sendColumns(ctx, tok, ledgerInsert,
		[]any{strs[0], strs[1], strs[2], lc[0], amounts, lc[1], strs[3], strs[4], strs[5], at, strs[6], lc[2], parts, offsets, strs[7]})
}

// RecordIntents durably records the ranges of an insert about to be made with token, so
// that a sink restarted before committing their offsets re-forms exactly this insert.
func (s *Store) RecordIntents(ctx context.Context, group, token string, rs []rows.Range) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO sink_intents (consumer_group, topic, partition, first_offset, last_offset, token)", driver.WithReleaseConnection())
	if err != nil {
		return fmt.Errorf("chstore: record intents: %w", err)
	}
	defer func() { _ = b.Abort() }()
	for _, r := range rs {
		if err := b.Append(group, r.Topic, r.Partition, r.First, r.Last, token); err != nil {
			return fmt.Errorf("chstore: record intents: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("chstore: record intents: %w", err)
	}
	return nil
}

// PendingIntents returns at most limit recorded inserts with a range of one partition that
// ends at or after offset from (the inserts that may have been made without their offsets
// being committed), each with every range it covers, of any partition, in the order of
// their range of this partition.
func (s *Store) PendingIntents(ctx context.Context, group, topic string, partition int32, from int64, limit int) ([]rows.Intent, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ctx = clickhouse.Context(ctx, clickhouse.WithParameters(clickhouse.Parameters{
		"g": group, "t": topic, "p": fmt.Sprint(partition), "o": fmt.Sprint(from), "n": fmt.Sprint(limit)}))
	// The inner query reads this partition's intents through the primary key; the outer one
	// finds the other ranges of the same inserts through token's bloom filter (0008).
	rs, err := s.conn.Query(ctx, `SELECT DISTINCT token, topic, partition, first_offset, last_offset FROM sink_intents
WHERE consumer_group = {g:String} AND token IN (
    SELECT token FROM sink_intents
    WHERE consumer_group = {g:String} AND topic = {t:String} AND partition = {p:Int32} AND last_offset >= {o:Int64}
    GROUP BY token ORDER BY min(first_offset) LIMIT {n:UInt32})`)
	if err != nil {
		return nil, fmt.Errorf("chstore: pending intents %s/%d: %w", topic, partition, err)
	}
	defer rs.Close()
	byToken := map[string]*rows.Intent{}
	at := map[string]int64{} // each insert's first offset in this partition
	for rs.Next() {
		var tok string
		var r rows.Range
		if err := rs.Scan(&tok, &r.Topic, &r.Partition, &r.First, &r.Last); err != nil {
			return nil, fmt.Errorf("chstore: pending intents %s/%d: %w", topic, partition, err)
		}
		in := byToken[tok]
		if in == nil {
			in = &rows.Intent{Token: tok}
			byToken[tok] = in
		}
		in.Ranges = append(in.Ranges, r)
		if r.Topic == topic && r.Partition == partition {
			if a, ok := at[tok]; !ok || r.First < a {
				at[tok] = r.First
			}
		}
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("chstore: pending intents %s/%d: %w", topic, partition, err)
	}
	out := make([]rows.Intent, 0, len(byToken))
	for _, in := range byToken {
		rows.SortRanges(in.Ranges)
		out = append(out, *in)
	}
	slices.SortFunc(out, func(a, b rows.Intent) int { return cmp.Compare(at[a.Token], at[b.Token]) })
	return out, nil
}
