package chstore_test

import (
	"context"
	"fmt"
	"io/fs"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/events"
)

func TestSplitStatements(t *testing.T) {
	got := chstore.SplitStatements("-- c\nCREATE TABLE a\n(x UInt8);\n\n  -- d\nSELECT 1;\nSELECT 2")
	want := []string{"CREATE TABLE a\n(x UInt8)", "SELECT 1", "SELECT 2"}
	if len(got) != len(want) {
		t.Fatalf("got %q", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("statement %d: got %q want %q", i, got[i], want[i])
		}
	}
}

func TestMigrateIdempotentAndRecorded(t *testing.T) {
	_, conn := chtest.Open(t)
	ctx := context.Background()
	done, err := chstore.Migrate(ctx, conn, chschema.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 0 {
		t.Fatalf("second run applied %v, want nothing", done)
	}
	ms, err := chstore.LoadMigrations(chschema.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM schema_migrations FINAL"); n != uint64(len(ms)) {
		t.Fatalf("schema_migrations has %d rows, want %d", n, len(ms))
	}
	for _, tbl := range []string{"usage_events", "ledger_entries", "requests_v", "usage_1m", "rejections_1m", "clients_1h", "sink_intents"} {
		if n := chtest.Count(t, conn, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = ?", tbl); n != 1 {
			t.Errorf("table %s missing", tbl)
		}
	}
	// 0007 replaced the requests table and its view by requests_v over usage_events.
	for _, tbl := range []string{"requests", "requests_mv"} {
		if n := chtest.Count(t, conn, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = ?", tbl); n != 0 {
			t.Errorf("%s still exists", tbl)
		}
	}
	// A changed file under a recorded version is refused.
	changed := fstest.MapFS{ms[0].Name: {Data: []byte("SELECT 1;")}}
	if _, err := chstore.Migrate(ctx, conn, changed); err == nil {
		t.Fatal("a changed applied migration was accepted")
	}
	if err := chstore.ApplyRetention(ctx, conn, 30); err != nil {
		t.Fatal(err)
	}
	var full string
	if err := conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = 'usage_events'").Scan(&full); err != nil {
		t.Fatal(err)
	}
	if !contains(full, "toIntervalDay(30)") {
		t.Fatalf("TTL not applied: %s", full)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func sampleBatch(t *testing.T, topic string, partition int32, first int64) *rows.Batch {
	t.Helper()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := &rows.Batch{}
	mk := func(d events.Data, off int64) {
		ev, err := events.New("test", at.Add(time.Duration(off)*time.Second), d)
		if err != nil {
			t.Fatal(err)
		}
		pos := rows.Position{Topic: topic, Partition: partition, Offset: off}
		u, l, ok := rows.FromEvent(ev, pos)
		if !ok {
			t.Fatalf("no row for %s", ev.Type)
		}
		b.Add(pos, 100, u, l)
	}
	mk(events.RequestStarted{RequestID: "r1", AccountID: "a1", Endpoint: "video", Tier: "pro", Priority: "standard",
		Funding: "credits", EstimateMicros: 500, HoldMicros: 500, HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: "v1",
		ClientAddr: "10.0.0.1", KeyID: "k1"}, first)
	mk(events.RequestFinished{RequestID: "r1", AccountID: "a1", Endpoint: "video", Status: "succeeded", CostMicros: 420,
		DurationMs: 1500, PriceBookVersion: "v1", Usage: events.Units{VideoSeconds: 4}}, first+1)
	mk(events.LedgerEntry{EntryID: events.DerivedID("x", "1"), TransactionID: "t1", AccountID: "a1", LedgerAccount: events.LedgerRevenue,
		AmountMicros: 420, Kind: "charge", CauseEventID: "c1", EffectiveAt: at}, first+2)
	return b
}

// TestBatchInsertRoundTrip: every column of a usage row and a ledger row reads back as
// written (the inserts append column by column, so a column out of place would show here).
func TestBatchInsertRoundTrip(t *testing.T) {
	_, conn := chtest.Open(t)
	st := chstore.NewStore(conn, time.Minute)
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	u := &rows.Usage{EventID: "0190f5e4-7d3c-7b8e-9a57-7a1e11e7a11e", Type: "t.type", Time: at, Source: "src", AccountID: "acct",
		RequestID: "req", KeyID: "key", ClientAddr: "10.1.2.3", Endpoint: "ep", Model: "mdl", Tier: "tier", Priority: "prio",
		Funding: "fund", Status: "stat", Reason: "why", EstimateMicros: 1, HoldMicros: 2, AllowanceMicros: 3, CostMicros: 4,
		AmountMicros: 5, HoldExpiresAt: at.Add(time.Minute), VideoSeconds: 6, Resolution: "res", TokensIn: 7, TokensOut: 8,
		ComputeMs: 9, DurationMs: 10, RetryAfterMs: 11, Score: 1.5, PriceBookVersion: "pbv", Attrs: map[string]string{"k": "v"},
		Pos: rows.Position{Topic: "topic-u", Partition: 12, Offset: 13}, PaidAllowanceMicros: 17, PaidCreditsMicros: 18, OverageMicros: 19,
		FundingAccountID: "org"}
	l := &rows.Ledger{EntryID: "entry", TransactionID: "tx", AccountID: "acct", LedgerAccount: "lacct", AmountMicros: -14,
		Kind: "kind", CauseEventID: "cause", RequestID: "req", ProjectID: "proj", GrantID: "grant", EffectiveAt: at.Add(time.Second),
		EventID: "0190f5e4-7d3c-7b8e-9a57-7a1e11e7a11f", Pos: rows.Position{Topic: "topic-l", Partition: 15, Offset: 16}}
	if err := st.BatchInsert(ctx, &rows.Batch{Range: rows.Range{Topic: "t", First: 1, Last: 2}, Usage: []*rows.Usage{u}, Ledger: []*rows.Ledger{l}}); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := conn.QueryRow(ctx, `SELECT concatWithSeparator('|', toString(event_id), type, toString(time), source, account_id,
request_id, key_id, client_addr, endpoint, model, tier, priority, funding, status, reason, toString(estimate_micros),
toString(hold_micros), toString(allowance_micros), toString(cost_micros), toString(amount_micros), toString(hold_expires_at),
toString(video_seconds), resolution, toString(tokens_in), toString(tokens_out), toString(compute_ms), toString(duration_ms),
toString(retry_after_ms), toString(score), price_book_version, toString(attrs), kafka_topic, toString(kafka_partition),
toString(kafka_offset), toString(paid_allowance_micros), toString(paid_credits_micros), toString(overage_micros),
funding_account_id) FROM usage_events`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	want := "0190f5e4-7d3c-7b8e-9a57-7a1e11e7a11e|t.type|2026-03-01 12:00:00.000|src|acct|req|key|10.1.2.3|ep|mdl|tier|prio|fund|stat|why|1|2|3|4|5|2026-03-01 12:01:00.000|6|res|7|8|9|10|11|1.5|pbv|{'k':'v'}|topic-u|12|13|17|18|19|org"
	if got != want {
		t.Errorf("usage_events row:\n got %s\nwant %s", got, want)
	}
	if err := conn.QueryRow(ctx, `SELECT concatWithSeparator('|', entry_id, transaction_id, account_id, ledger_account,
toString(amount_micros), kind, cause_event_id, request_id, grant_id, toString(effective_at), toString(event_id), kafka_topic,
toString(kafka_partition), toString(kafka_offset), project_id) FROM ledger_entries`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	want = "entry|tx|acct|lacct|-14|kind|cause|req|grant|2026-03-01 12:00:01.000|0190f5e4-7d3c-7b8e-9a57-7a1e11e7a11f|topic-l|15|16|proj"
	if got != want {
		t.Errorf("ledger_entries row:\n got %s\nwant %s", got, want)
	}
}

func TestBatchInsertDeduplicatesRedelivery(t *testing.T) {
	_, conn := chtest.Open(t)
	st := chstore.NewStore(conn, time.Minute)
	ctx := context.Background()
	b := sampleBatch(t, "tally.events", 3, 10)
	for i := 0; i < 3; i++ {
		if err := st.BatchInsert(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM usage_events"); n != 2 {
		t.Fatalf("usage_events has %d rows after 3 identical sends, want 2", n)
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM ledger_entries"); n != 1 {
		t.Fatalf("ledger_entries has %d rows, want 1", n)
	}
	if n := chtest.Count(t, conn, "SELECT toUInt64(sum(started)) FROM usage_1m"); n != 1 {
		t.Fatalf("usage_1m counted %d starts, want 1 (rollup double-counted a re-sent batch)", n)
	}
	var cost, dur int64
	var outcome string
	if err := conn.QueryRow(ctx, "SELECT cost_micros, duration_ms, outcome FROM requests_v WHERE request_id = 'r1'").Scan(&cost, &dur, &outcome); err != nil {
		t.Fatal(err)
	}
	if cost != 420 || dur != 1500 || outcome != "succeeded" {
		t.Fatalf("requests_v: cost %d duration %d outcome %q", cost, dur, outcome)
	}
	// A different range is a different batch: it is inserted.
	b2 := sampleBatch(t, "tally.events", 3, 13)
	if err := st.BatchInsert(ctx, b2); err != nil {
		t.Fatal(err)
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM usage_events"); n != 4 {
		t.Fatalf("usage_events has %d rows, want 4", n)
	}
}

func TestIntents(t *testing.T) {
	_, conn := chtest.Open(t)
	st := chstore.NewStore(conn, time.Minute)
	ctx := context.Background()
	// Three inserts: one range of e/1 alone (as recorded before 0008), then two inserts each
	// spanning partitions of both topics.
	one := []rows.Range{{Topic: "e", Partition: 1, First: 0, Last: 9}}
	g1 := []rows.Range{{Topic: "e", Partition: 1, First: 10, Last: 19}, {Topic: "e", Partition: 2, First: 0, Last: 4}, {Topic: "j", Partition: 0, First: 7, Last: 8}}
	g2 := []rows.Range{{Topic: "e", Partition: 2, First: 5, Last: 9}, {Topic: "e", Partition: 1, First: 20, Last: 29}}
	for _, rs := range [][]rows.Range{g2, one, g1} { // recorded out of order
		if err := st.RecordIntents(ctx, "g", rows.GroupToken(rs), rs); err != nil {
			t.Fatal(err)
		}
	}
	// A retried record writes the same rows twice: they are recalled once.
	if err := st.RecordIntents(ctx, "g", rows.GroupToken(g1), g1); err != nil {
		t.Fatal(err)
	}
	sorted := func(rs []rows.Range) []rows.Range {
		c := append([]rows.Range(nil), rs...)
		rows.SortRanges(c)
		return c
	}
	want := func(rss ...[]rows.Range) []rows.Intent {
		var out []rows.Intent
		for _, rs := range rss {
			out = append(out, rows.Intent{Token: rows.GroupToken(rs), Ranges: sorted(rs)})
		}
		return out
	}
	for _, c := range []struct {
		group, topic string
		partition    int32
		from         int64
		limit        int
		want         []rows.Intent
	}{
		{"g", "e", 1, 5, 10, want(one, g1, g2)}, // in the order of e/1's ranges
		{"g", "e", 1, 10, 10, want(g1, g2)},     // a range ending before 10 is committed
		{"g", "e", 1, 10, 1, want(g1)},          // the limit counts inserts, not ranges
		{"g", "e", 2, 0, 10, want(g1, g2)},      // the same inserts seen from e/2
		{"g", "j", 0, 8, 10, want(g1)},          // ... and from the journal
		{"g", "e", 1, 30, 10, nil},              // all committed
		{"other", "e", 1, 0, 10, nil},           // another consumer group's intents
	} {
		got, err := st.PendingIntents(ctx, c.group, c.topic, c.partition, c.from, c.limit)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, c.want) && !(len(got) == 0 && len(c.want) == 0) {
			t.Errorf("PendingIntents(%s, %s/%d from %d, limit %d) = %v, want %v", c.group, c.topic, c.partition, c.from, c.limit, got, c.want)
		}
	}
	if one[0].Token() != rows.GroupToken(one) {
		t.Error("a one-range insert must keep the range's own token (intents recorded before 0008)")
	}
	// The lookup of an insert's other ranges by token goes through token's bloom filter (0008).
	plan := explainIndexes(t, conn, "SELECT topic FROM sink_intents WHERE consumer_group = 'g' AND token IN (SELECT token FROM sink_intents WHERE partition = 1)")
	if !strings.Contains(plan, "token_bf") {
		t.Errorf("the token lookup does not use token_bf:\n%s", plan)
	}
}

// TestRequestsView: requests_v (0007: a GROUP BY over usage_events) assembles each request
// from its events, derives outcome and late_finish, is not changed by a producer's duplicate
// event, and a filter on account_id or request_id reaches usage_events' primary key or its
// request_id index instead of aggregating every request.
func TestRequestsView(t *testing.T) {
	_, conn := chtest.Open(t)
	st := chstore.NewStore(conn, time.Minute)
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := &rows.Batch{}
	off := int64(0)
	add := func(ev events.Event) {
		pos := rows.Position{Topic: "tally.events", Partition: 0, Offset: off}
		off++
		u, l, ok := rows.FromEvent(ev, pos)
		if !ok {
			t.Fatalf("no row for %s", ev.Type)
		}
		b.Add(pos, 100, u, l)
	}
	mk := func(acct string, sec int, d events.Data) events.Event {
		ev, err := events.New("test", at.Add(time.Duration(sec)*time.Second), d)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	started := func(acct, req string, sec int) events.Event {
		return mk(acct, sec, events.RequestStarted{RequestID: req, AccountID: acct, Endpoint: "video", Tier: "pro", Priority: "standard",
			Funding: "credits", EstimateMicros: 500, HoldMicros: 500, HoldExpiresAt: at.Add(time.Duration(sec+60) * time.Second),
			PriceBookVersion: "v1"})
	}
	finished := func(acct, req, status string, sec int, cost, dur int64) events.Event {
		return mk(acct, sec, events.RequestFinished{RequestID: req, AccountID: acct, Endpoint: "video", Status: status,
			CostMicros: cost, DurationMs: dur, PriceBookVersion: "v1"})
	}
	add(started("a1", "r-ok", 0))
	okDone := finished("a1", "r-ok", "succeeded", 10, 420, 1500)
	add(okDone)
	add(okDone) // a producer's duplicate: same event at another offset
	add(started("a1", "r-fail", 1))
	add(finished("a1", "r-fail", "failed", 5, 0, 700))
	add(mk("a1", 2, events.RequestRejected{RequestID: "r-rej", AccountID: "a1", Endpoint: "video", Tier: "pro", Priority: "standard",
		Reason: "rate_limited", RetryAfterMs: 100, EstimateMicros: 500, PriceBookVersion: "v1"}))
	add(started("a1", "r-exp", 3))
	add(mk("a1", 70, events.RequestExpired{RequestID: "r-exp", AccountID: "a1", Endpoint: "video", Funding: "credits", HoldMicros: 500,
		ReleasedMicros: 500, StartedEventID: events.DerivedID("x", "s"), ExpiredAt: at.Add(70 * time.Second)}))
	add(started("a1", "r-late", 4))
	add(finished("a1", "r-late", "succeeded", 120, 900, 116000)) // after its hold expired (4 + 60 s)
	add(started("a1", "r-fly", 5))
	add(started("a2", "r-other", 6))
	b.Range = rows.Range{Topic: "tally.events", Partition: 0, First: 0, Last: off - 1}
	if err := st.BatchInsert(ctx, b); err != nil {
		t.Fatal(err)
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM usage_events WHERE request_id = 'r-ok'"); n != 3 {
		t.Fatalf("usage_events holds %d rows of r-ok, want 3 (the duplicate is folded only at merge)", n)
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM requests_v"); n != 7 {
		t.Fatalf("requests_v has %d rows, want 7 (one per request)", n)
	}
	type req struct {
		outcome, status, reason, tier, funding string
		cost, dur, hold                        int64
		late                                   bool
		started, finished                      time.Time
	}
	want := map[string]req{
		"r-ok":    {outcome: "succeeded", status: "succeeded", tier: "pro", funding: "credits", cost: 420, dur: 1500, hold: 500, started: at, finished: at.Add(10 * time.Second)},
		"r-fail":  {outcome: "failed", status: "failed", tier: "pro", funding: "credits", dur: 700, hold: 500, started: at.Add(time.Second), finished: at.Add(5 * time.Second)},
		"r-rej":   {outcome: "rejected", reason: "rate_limited", tier: "pro", started: time.Unix(0, 0).UTC(), finished: time.Unix(0, 0).UTC()},
		"r-exp":   {outcome: "expired", tier: "pro", funding: "credits", hold: 500, started: at.Add(3 * time.Second), finished: time.Unix(0, 0).UTC()},
		"r-late":  {outcome: "succeeded", status: "succeeded", tier: "pro", funding: "credits", cost: 900, dur: 116000, hold: 500, late: true, started: at.Add(4 * time.Second), finished: at.Add(120 * time.Second)},
		"r-fly":   {outcome: "in_flight", tier: "pro", funding: "credits", hold: 500, started: at.Add(5 * time.Second), finished: time.Unix(0, 0).UTC()},
		"r-other": {outcome: "in_flight", tier: "pro", funding: "credits", hold: 500, started: at.Add(6 * time.Second), finished: time.Unix(0, 0).UTC()},
	}
	rs, err := conn.Query(ctx, `SELECT request_id, outcome, status, reject_reason, tier, funding, cost_micros, duration_ms,
hold_micros, late_finish, started_at, finished_at FROM requests_v`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	seen := 0
	for rs.Next() {
		var id string
		var g req
		if err := rs.Scan(&id, &g.outcome, &g.status, &g.reason, &g.tier, &g.funding, &g.cost, &g.dur, &g.hold, &g.late, &g.started, &g.finished); err != nil {
			t.Fatal(err)
		}
		w, ok := want[id]
		g.started, g.finished = g.started.UTC(), g.finished.UTC()
		if !ok || g != w {
			t.Errorf("%s: got %+v\nwant %+v", id, g, w)
		}
		seen++
	}
	if err := rs.Err(); err != nil || seen != len(want) {
		t.Fatalf("read %d requests (%v), want %d", seen, err, len(want))
	}
	// Per-account and per-request reads use usage_events' indexes through the view.
	for q, wantIdx := range map[string]string{
		"SELECT count() FROM requests_v WHERE account_id = 'a2'":   "Condition: (account_id in",
		"SELECT count() FROM requests_v WHERE request_id = 'r-ok'": "Name: idx_request",
	} {
		plan := explainIndexes(t, conn, q)
		if !contains(plan, wantIdx) {
			t.Errorf("%s: the plan does not show %q:\n%s", q, wantIdx, plan)
		}
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM requests_v WHERE account_id = 'a2'"); n != 1 {
		t.Fatalf("requests_v for a2: %d, want 1", n)
	}
}

func explainIndexes(t *testing.T, conn clickhouse.Conn, q string) string {
	t.Helper()
	rs, err := conn.Query(context.Background(), "EXPLAIN indexes = 1 "+q)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out strings.Builder
	for rs.Next() {
		var line string
		if err := rs.Scan(&line); err != nil {
			t.Fatal(err)
		}
		out.WriteString(line + "\n")
	}
	return out.String()
}

// TestRequestsViewUpgrade: a store migrated up to 0006 (requests table and requests_mv) with
// data in it, then to 0007, answers requests_v and requests_credits_v from usage_events with
// the same rows, and later inserts no longer reach a requests table.
func TestRequestsViewUpgrade(t *testing.T) {
	_, conn := migratedUpTo(t, 6)
	ctx := context.Background()
	// The store writes the latest schema's columns: add 0010's, 0011's and 0013's by hand (their
	// ADD COLUMN IF NOT EXISTS then leaves them) so that it can write the rows of the old schema.
	if err := conn.Exec(ctx, `ALTER TABLE usage_events ADD COLUMN paid_allowance_micros Int64 DEFAULT 0,
ADD COLUMN paid_credits_micros Int64 DEFAULT 0, ADD COLUMN overage_micros Int64 DEFAULT 0,
ADD COLUMN funding_account_id LowCardinality(String) DEFAULT ''`); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, `ALTER TABLE ledger_entries ADD COLUMN project_id String DEFAULT '' AFTER request_id`); err != nil {
		t.Fatal(err)
	}
	st := chstore.NewStore(conn, time.Minute)
	if err := st.BatchInsert(ctx, sampleBatch(t, "tally.events", 0, 0)); err != nil {
		t.Fatal(err)
	}
	const q = "SELECT request_id, outcome, cost_micros, duration_ms, hold_micros, tier, toString(cost_credits) FROM requests_credits_v"
	read := func() []string {
		rs, err := conn.Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		var out []string
		for rs.Next() {
			var id, outcome, tier, credits string
			var cost, dur, hold int64
			if err := rs.Scan(&id, &outcome, &cost, &dur, &hold, &tier, &credits); err != nil {
				t.Fatal(err)
			}
			out = append(out, fmt.Sprint(id, outcome, cost, dur, hold, tier, credits))
		}
		return out
	}
	before := read()
	if len(before) != 1 || chtest.Count(t, conn, "SELECT count() FROM requests") == 0 {
		t.Fatalf("before 0007: requests_credits_v %q, requests table empty or missing", before)
	}
	done, err := chstore.Migrate(ctx, conn, chschema.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) == 0 || done[0] != 7 {
		t.Fatalf("upgrade applied %v, want 7 first", done)
	}
	if after := read(); strings.Join(after, ";") != strings.Join(before, ";") {
		t.Fatalf("requests_credits_v changed across 0007: %q, was %q", after, before)
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name IN ('requests', 'requests_mv')"); n != 0 {
		t.Fatalf("requests or requests_mv still exists after 0007 (%d)", n)
	}
	if err := st.BatchInsert(ctx, sampleBatch(t, "tally.events", 0, 3)); err != nil {
		t.Fatal(err)
	}
	if n := chtest.Count(t, conn, "SELECT count() FROM requests_v"); n != 1 {
		t.Fatalf("requests_v after a second batch for the same request id: %d rows, want 1", n)
	}
}

// TestRequestsViewFundingSplit: requests_v (0010) carries a split-funded request's
// reservation (allowance and hold) and its cost's split at settlement.
func TestRequestsViewFundingSplit(t *testing.T) {
	_, conn := chtest.Open(t)
	st := chstore.NewStore(conn, time.Minute)
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := &rows.Batch{}
	for i, d := range []events.Data{
		events.RequestStarted{RequestID: "r-split", AccountID: "a1", Endpoint: "video", Tier: "free", Priority: "standard",
			Funding: events.FundingSplit, EstimateMicros: 2_000_000, AllowanceMicros: 1_000_000, HoldMicros: 1_000_000,
			HoldExpiresAt: at.Add(time.Hour), PriceBookVersion: "v1"},
		events.RequestFinished{RequestID: "r-split", AccountID: "a1", Endpoint: "video", Status: "succeeded", CostMicros: 3_000_000,
			AllowanceMicros: 1_000_000, CreditsMicros: 1_500_000, OverageMicros: 500_000, PriceBookVersion: "v1"},
	} {
		ev, err := events.New("test", at.Add(time.Duration(i)*time.Second), d)
		if err != nil {
			t.Fatal(err)
		}
		pos := rows.Position{Topic: "tally.events", Offset: int64(i)}
		u, l, _ := rows.FromEvent(ev, pos)
		b.Add(pos, 100, u, l)
	}
	b.Range = rows.Range{Topic: "tally.events", First: 0, Last: 1}
	if err := st.BatchInsert(ctx, b); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := conn.QueryRow(ctx, `SELECT concatWithSeparator('|', funding, toString(allowance_micros), toString(hold_micros),
toString(cost_micros), toString(paid_allowance_micros), toString(paid_credits_micros), toString(overage_micros)) FROM requests_v`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if want := "split|1000000|1000000|3000000|1000000|1500000|500000"; got != want {
		t.Fatalf("requests_v: %s, want %s", got, want)
	}
}

// migratedUpTo opens the test database (closed at cleanup) and runs the migrations up to
// version, as a store of that release left it; the test then writes rows and migrates on.
func migratedUpTo(t *testing.T, version uint32) (chstore.Config, clickhouse.Conn) {
	t.Helper()
	cfg := chtest.Config(t)
	conn, err := chstore.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ms, err := chstore.LoadMigrations(chschema.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	upTo := fstest.MapFS{}
	for _, m := range ms {
		if m.Version <= version {
			b, err := fs.ReadFile(chschema.Migrations, m.Name)
			if err != nil {
				t.Fatal(err)
			}
			upTo[m.Name] = &fstest.MapFile{Data: b}
		}
	}
	if _, err := chstore.Migrate(context.Background(), conn, upTo); err != nil {
		t.Fatal(err)
	}
	return cfg, conn
}

// runAgain runs every statement of the given migrations once more, as a migration interrupted
// half-way is run again from its first statement: each must succeed and change nothing.
func runAgain(t *testing.T, conn clickhouse.Conn, versions ...uint32) {
	t.Helper()
	ms, err := chstore.LoadMigrations(chschema.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if !slices.Contains(versions, m.Version) {
			continue
		}
		for _, stmt := range m.Statements {
			if err := conn.Exec(context.Background(), stmt); err != nil {
				t.Fatalf("%s run again: %v\n%s", m.Name, err, stmt)
			}
		}
	}
}
