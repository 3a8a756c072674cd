package chstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/events"
)

// fundedBatch is three requests with the same request id "r1": two of projects p1 and p2,
// both funded by the organization org (their events' subject), and one of solo, which funds
// itself; plus p1's own unfunded request "r2" and a rejection of p2 (keyed by the project).
func fundedBatch(t *testing.T, first int64) *rows.Batch {
	t.Helper()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := &rows.Batch{}
	off := first
	add := func(sec int, d events.Data) {
		ev, err := events.New("test", at.Add(time.Duration(sec)*time.Second), d)
		if err != nil {
			t.Fatal(err)
		}
		pos := rows.Position{Topic: "tally.events", Partition: 0, Offset: off}
		off++
		u, l, ok := rows.FromEvent(ev, pos)
		if !ok {
			t.Fatalf("no row for %s", ev.Type)
		}
		b.Add(pos, 100, u, l)
	}
	req := func(acct, funder, id string, sec int, cost int64) {
		add(sec, events.RequestStarted{RequestID: id, AccountID: acct, FundingAccountID: funder, Endpoint: "video", Tier: "pro",
			Priority: "standard", Funding: "credits", EstimateMicros: cost, HoldMicros: cost,
			HoldExpiresAt: at.Add(time.Hour), PriceBookVersion: "v1"})
		add(sec+1, events.RequestFinished{RequestID: id, AccountID: acct, FundingAccountID: funder, Endpoint: "video",
			Status: "succeeded", CostMicros: cost, CreditsMicros: cost, PriceBookVersion: "v1"})
	}
	req("p1", "org", "r1", 0, 1_000_001)
	req("p2", "org", "r1", 2, 2_500_003)
	req("solo", "", "r1", 4, 700_000)
	req("p1", "", "r2", 6, 40_000)
	add(8, events.RequestRejected{RequestID: "r3", AccountID: "p2", Endpoint: "video", Tier: "pro", Priority: "standard",
		Reason: "budget_exhausted", PriceBookVersion: "v1"})
	b.Range = rows.Range{Topic: "tally.events", Partition: 0, First: first, Last: off - 1}
	return b
}

// TestFundedRequests: a funded request's events land with funding_account_id set (the
// paying organization) and account_id the project; requests_v keeps one request per
// (account_id, request_id), so two projects of one organization that use the same request id
// are two requests, each with its own cost and the organization as its payer.
func TestFundedRequests(t *testing.T) {
	_, conn := chtest.Open(t)
	st := chstore.NewStore(conn, time.Minute)
	ctx := context.Background()
	if err := st.BatchInsert(ctx, fundedBatch(t, 0)); err != nil {
		t.Fatal(err)
	}
	got := queryLines(t, conn, `SELECT concatWithSeparator('|', account_id, request_id, toString(cost_micros), outcome) FROM requests_v ORDER BY account_id, request_id`)
	want := []string{"p1|r1|1000001|succeeded", "p1|r2|40000|succeeded", "p2|r1|2500003|succeeded", "p2|r3|0|rejected", "solo|r1|700000|succeeded"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests_v:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	got = queryLines(t, conn, `SELECT concatWithSeparator('|', account_id, request_id, type, funding_account_id) FROM usage_events ORDER BY account_id, request_id, type`)
	want = []string{
		"p1|r1|tally.request.finished.v1|org", "p1|r1|tally.request.started.v1|org",
		"p1|r2|tally.request.finished.v1|", "p1|r2|tally.request.started.v1|",
		"p2|r1|tally.request.finished.v1|org", "p2|r1|tally.request.started.v1|org",
		"p2|r3|tally.request.rejected.v1|",
		"solo|r1|tally.request.finished.v1|", "solo|r1|tally.request.started.v1|",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("usage_events:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// requests_credits_v carries requests_v's columns of 0010 and 0011 too (its column list
	// was fixed when 0006 created it; 0011 creates it again).
	got = queryLines(t, conn, `SELECT concatWithSeparator('|', account_id, request_id, funding_account_id, toString(cost_credits),
toString(paid_credits_micros)) FROM requests_credits_v ORDER BY account_id, request_id`)
	want = []string{"p1|r1|org|1.000001|1000001", "p1|r2||0.04|40000", "p2|r1|org|2.500003|2500003", "p2|r3||0|0", "solo|r1||0.7|700000"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests_credits_v:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// usage_1m (0012) rolls up by funding account too: per-organization totals from the
	// rollup, to the micro-credit.
	got = queryLines(t, conn, `SELECT concatWithSeparator('|', payer, toString(sum(started)), toString(sum(finished)),
toString(sum(rejected)), toString(sum(cost_micros)), toString(sum(hold_micros)))
FROM (SELECT *, if(funding_account_id = '', account_id, funding_account_id) AS payer FROM usage_1m) GROUP BY payer ORDER BY payer`)
	want = []string{"org|2|2|0|3500004|3500004", "p1|1|1|0|40000|40000", "p2|0|0|1|0|0", "solo|1|1|0|700000|700000"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("usage_1m by paying account:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The column is LowCardinality (few organizations, most rows '').
	var typ string
	if err := conn.QueryRow(ctx, "SELECT type FROM system.columns WHERE database = currentDatabase() AND table = 'usage_events' AND name = 'funding_account_id'").Scan(&typ); err != nil {
		t.Fatal(err)
	}
	if typ != "LowCardinality(String)" {
		t.Errorf("usage_events.funding_account_id is %s", typ)
	}
}

// TestFundingColumnUpgrade: a store migrated up to 0010 with request rows in it is migrated to
// the latest schema: the old rows read funding_account_id ” (they funded themselves), their
// requests are unchanged in requests_v, and a funded request written after the upgrade lands
// with its organization.
func TestFundingColumnUpgrade(t *testing.T) {
	_, conn := migratedUpTo(t, 10)
	ctx := context.Background()
	// Rows as a sink of 0010 wrote them (its column list; no funding_account_id).
	if err := conn.Exec(ctx, `INSERT INTO usage_events (event_id, type, time, account_id, request_id, endpoint, tier, funding,
status, hold_micros, cost_micros, paid_credits_micros, hold_expires_at) VALUES
(generateUUIDv4(), 'tally.request.started.v1', '2026-02-01 10:00:00', 'old', 'r1', 'video', 'pro', 'credits', '', 300, 0, 0, '2026-02-01 11:00:00'),
(generateUUIDv4(), 'tally.request.finished.v1', '2026-02-01 10:00:05', 'old', 'r1', 'video', '', '', 'succeeded', 0, 250, 250, '1970-01-01 00:00:00')`); err != nil {
		t.Fatal(err)
	}
	const q = `SELECT concatWithSeparator('|', account_id, request_id, outcome, toString(cost_micros), toString(hold_micros), toString(duration_ms)) FROM requests_v ORDER BY account_id, request_id`
	before := queryLines(t, conn, q)
	if len(before) != 1 {
		t.Fatalf("before the upgrade: %q", before)
	}
	done, err := chstore.Migrate(ctx, conn, chschema.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) == 0 || done[0] != 11 {
		t.Fatalf("upgrade applied %v, want 11 first", done)
	}
	if after := queryLines(t, conn, q); strings.Join(after, ";") != strings.Join(before, ";") {
		t.Fatalf("requests_v changed across the upgrade: %q, was %q", after, before)
	}
	if got := queryLines(t, conn, `SELECT concatWithSeparator('|', account_id, funding_account_id, toString(count())) FROM usage_events GROUP BY account_id, funding_account_id`); strings.Join(got, ";") != "old||2" {
		t.Fatalf("old rows after the upgrade: %q", got)
	}
	const rollup = `SELECT concatWithSeparator('|', account_id, funding_account_id, toString(sum(started)), toString(sum(finished)),
toString(sum(cost_micros))) FROM usage_1m GROUP BY account_id, funding_account_id ORDER BY account_id, funding_account_id`
	if got := queryLines(t, conn, rollup); strings.Join(got, ";") != "old||1|1|250" {
		t.Fatalf("usage_1m rows rolled up before the upgrade: %q", got)
	}
	// A migration interrupted half-way is run again from its first statement: 0011's and
	// 0012's statements succeed a second time and change nothing.
	runAgain(t, conn, 11, 12)
	if err := chstore.NewStore(conn, time.Minute).BatchInsert(ctx, fundedBatch(t, 0)); err != nil {
		t.Fatal(err)
	}
	got := queryLines(t, conn, `SELECT concatWithSeparator('|', account_id, request_id, funding_account_id, toString(cost_micros)) FROM requests_v WHERE request_id = 'r1' ORDER BY account_id`)
	if want := "old|r1||250;p1|r1|org|1000001;p2|r1|org|2500003;solo|r1||700000"; strings.Join(got, ";") != want {
		t.Fatalf("requests_v after the upgrade: %q, want %q", got, want)
	}
	if got, want := queryLines(t, conn, rollup), "old||1|1|250;p1||1|1|40000;p1|org|1|1|1000001;p2||0|0|0;p2|org|1|1|2500003;solo||1|1|700000"; strings.Join(got, ";") != want {
		t.Fatalf("usage_1m after the upgrade: %q, want %q", got, want)
	}
}

// queryLines runs q, whose one column is a String, and returns its rows.
func queryLines(t *testing.T, conn clickhouse.Conn, q string) []string {
	t.Helper()
	rs, err := conn.Query(context.Background(), q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		var line string
		if err := rs.Scan(&line); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		out = append(out, line)
	}
	if err := rs.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out
}
