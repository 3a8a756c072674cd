package sqlcli_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/services/sink/sqlcli"
	"github.com/tallyhq/tally/shared/events"
)

var day1 = time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)

func seed(t *testing.T) clickhouse.Conn {
	_, conn := chtest.Open(t)
	s := &testevents.Seeder{TB: t, Store: chstore.NewStore(conn, time.Minute), Topic: "seed"}
	// acct-a, pro, credits: three video requests on day 1.
	for i, c := range []int64{1000, 2000, 3000} {
		s.Request("acct-a", fmt.Sprintf("a%d", i), "video", "pro", events.FundingCredits, day1.Add(time.Duration(i+1)*time.Hour), c, int64(100*(i+1)), "1.1.1.1")
	}
	// acct-b, free, allowance: three chat requests on day 1, and four rejections.
	for i, d := range []int64{50, 100, 150} {
		s.Request("acct-b", fmt.Sprintf("b%d", i), "chat", "free", events.FundingAllowance, day1.Add(time.Duration(i+1)*time.Hour), 500, d, "2.2.2.2")
	}
	for i := 0; i < 3; i++ {
		s.Reject("acct-b", fmt.Sprintf("rb%d", i), "chat", "rate_limited", day1.Add(10*time.Minute), "2.2.2.2")
	}
	s.Reject("acct-b", "rb9", "chat", "insufficient_credits", day1.Add(70*time.Minute), "2.2.2.2")
	// acct-c, pro, credits: one big video request on day 2.
	s.Request("acct-c", "c0", "video", "pro", events.FundingCredits, day1.Add(26*time.Hour), 10_000, 1000, "3.3.3.3")
	// The journal's customer.available lines: grants in, charges out.
	ledger := func(acct string, amount int64, leg string) {
		s.Add(events.LedgerEntry{EntryID: events.DerivedID(acct, leg), TransactionID: leg, AccountID: acct,
			LedgerAccount: events.LedgerAvailable, AmountMicros: amount, Kind: leg, CauseEventID: leg, EffectiveAt: day1}, day1)
	}
	ledger("acct-a", 10_000, "grant-a")
	ledger("acct-a", -6000, "charges-a")
	ledger("acct-c", 100_000, "grant-c")
	ledger("acct-c", -10_000, "charges-c")
	s.Flush()
	return conn
}

func run(t *testing.T, conn clickhouse.Conn, name string, params map[string]string) []string {
	t.Helper()
	q, err := sqlcli.Named(name)
	if err != nil {
		t.Fatal(err)
	}
	cols, rows, err := sqlcli.Query(context.Background(), conn, q, sqlcli.Options{Format: "table", RowsMax: 100, Params: params})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	out := []string{strings.Join(cols, "|")}
	for _, r := range rows {
		f := make([]string, len(r))
		for i, v := range r {
			f[i] = sqlcli.Text(v)
		}
		out = append(out, strings.Join(f, "|"))
	}
	return out
}

func expect(t *testing.T, name string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\ngot\n  %s\nwant\n  %s", name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestAnalystQueriesOnTheEngine(t *testing.T) {
	conn := seed(t)
	span := map[string]string{"from": "2026-03-10 00:00:00", "to": "2026-03-12 00:00:00"}
	day1Only := map[string]string{"from": "2026-03-10 00:00:00", "to": "2026-03-11 00:00:00"}

	expect(t, "top_spenders", run(t, conn, "top_spenders", map[string]string{"from": span["from"], "to": span["to"], "limit": "2"}),
		"account_id|spent_micros|requests|spent_credits",
		"acct-c|10000|1|0.01",
		"acct-a|6000|3|0.006")

	expect(t, "credits_by_tier_endpoint_daily", run(t, conn, "credits_by_tier_endpoint_daily", span),
		"day|tier|endpoint|requests|total_micros|credits_micros|allowance_funded_micros",
		"2026-03-10T00:00:00Z|free|chat|3|1500|0|1500",
		"2026-03-10T00:00:00Z|pro|video|3|6000|6000|0",
		"2026-03-11T00:00:00Z|pro|video|1|10000|10000|0")

	got := run(t, conn, "duration_percentiles_by_endpoint", day1Only)
	expect(t, "duration_percentiles_by_endpoint (p50)", []string{got[0], cut(got[1], 3), cut(got[2], 3)},
		"endpoint|requests|p50_ms|p99_ms", "chat|3|100", "video|3|200")
	for _, line := range got[1:] {
		p99 := strings.Split(line, "|")[3]
		if (strings.HasPrefix(line, "chat") && (p99 < "148" || p99 > "150")) || (strings.HasPrefix(line, "video") && (p99 < "296" || p99 > "300")) {
			t.Errorf("p99 off: %s", line)
		}
	}

	expect(t, "rejection_reasons_over_time", run(t, conn, "rejection_reasons_over_time", map[string]string{"from": span["from"], "to": span["to"], "bucket_minutes": "60"}),
		"bucket|reason|rejected",
		"2026-03-10T00:00:00Z|rate_limited|3",
		"2026-03-10T01:00:00Z|insufficient_credits|1")

	expect(t, "allowance_vs_credits", run(t, conn, "allowance_vs_credits", day1Only),
		"day|tier|allowance_requests|allowance_funded_micros|credits_requests|credits_funded_micros|credits_share|split_requests|paid_allowance_micros|paid_credits_micros|overage_micros",
		"2026-03-10T00:00:00Z|free|3|1500|0|0|0|0|1500|0|0",
		"2026-03-10T00:00:00Z|pro|0|0|3|6000|1|0|0|6000|0")

	// acct-a: 4000 left, burned 6000 in 24 h = 250/h, 16 h of runway; acct-c: 90000 left,
	// 10000 in 24 h, 216 h: not close.
	expect(t, "accounts_near_exhaustion", run(t, conn, "accounts_near_exhaustion", map[string]string{"now": "2026-03-11 00:00:00", "lookback_hours": "24", "runway_hours": "100"}),
		"account_id|available_micros|burned_micros|burn_per_hour_micros|runway_hours",
		"acct-a|4000|6000|250|16")
}

// TestOrganizationUsageQuery: usage_by_organization_and_project gives, for one UTC month by
// finish time, each project's requests and cost under the account that paid (its funding
// organization, or itself) and each paying account's total, to the micro-credit; two projects
// of one organization with the same request id are two requests.
func TestOrganizationUsageQuery(t *testing.T) {
	_, conn := chtest.Open(t)
	s := &testevents.Seeder{TB: t, Store: chstore.NewStore(conn, time.Minute), Topic: "seed"}
	march := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	// req adds a started and, unless finish is zero, a finished request; paid is the cost's
	// split (allowance, credits, overage).
	req := func(acct, funder, id string, start, finish time.Time, paid [3]int64) {
		cost := paid[0] + paid[1] + paid[2]
		funding := map[[2]bool]string{{true, false}: events.FundingAllowance, {false, true}: events.FundingCredits,
			{true, true}: events.FundingSplit}[[2]bool{paid[0] > 0, cost > paid[0]}]
		s.Add(events.RequestStarted{RequestID: id, AccountID: acct, FundingAccountID: funder, Endpoint: "video", Tier: "pro",
			Priority: events.PriorityStandard, Funding: funding, EstimateMicros: cost, AllowanceMicros: paid[0],
			HoldMicros: cost - paid[0], HoldExpiresAt: start.Add(time.Hour), PriceBookVersion: "2026-01"}, start)
		if !finish.IsZero() {
			s.Add(events.RequestFinished{RequestID: id, AccountID: acct, FundingAccountID: funder, Endpoint: "video",
				Status: events.StatusSucceeded, CostMicros: cost, AllowanceMicros: paid[0], CreditsMicros: paid[1],
				OverageMicros: paid[2], PriceBookVersion: "2026-01"}, finish)
		}
	}
	day5 := march.Add(4 * 24 * time.Hour)
	req("proj-a", "org-1", "x1", day5, day5.Add(time.Second), [3]int64{0, 1_000_001, 0})
	req("proj-a", "org-1", "x2", march.Add(-time.Second), march.Add(time.Second), [3]int64{2_000_000, 2, 0})              // started in February
	req("proj-a", "org-1", "x3", march.AddDate(0, 1, 0).Add(-time.Second), march.AddDate(0, 1, 0), [3]int64{0, 9_999, 0}) // finished in April
	req("proj-b", "org-1", "x1", day5, day5.Add(2*time.Second), [3]int64{0, 3_000_000, 3})                                // proj-a's request id
	req("proj-b", "org-1", "x4", day5, time.Time{}, [3]int64{0, 77, 0})                                                   // in flight
	req("org-1", "", "o1", day5, day5.Add(time.Minute), [3]int64{500_000, 0, 0})                                          // the organization's own
	req("solo", "", "s1", day5, day5.Add(time.Minute), [3]int64{0, 700_000, 0})
	req("solo", "", "s0", march.Add(-time.Hour), march.Add(-time.Millisecond), [3]int64{0, 5, 0}) // finished in February
	s.Reject("proj-b", "x5", "video", "budget_exhausted", day5, "1.1.1.1")
	// The journal: the organization's balance (which its projects' requests draw on) and solo's.
	for acct, amount := range map[string]int64{"org-1": 2_000_000, "solo": 100_000_000} {
		s.Add(events.LedgerEntry{EntryID: events.DerivedID(acct, "grant"), TransactionID: "grant-" + acct, AccountID: acct,
			LedgerAccount: events.LedgerAvailable, AmountMicros: amount, Kind: "grant", CauseEventID: "grant-" + acct, EffectiveAt: march}, march)
	}
	s.Flush()

	want := []string{
		"paying_account_id|account_id|requests|cost_micros|paid_allowance_micros|paid_credits_micros|overage_micros|cost_credits",
		"org-1||4|6500006|2500000|4000003|3|6.500006",
		"org-1|org-1|1|500000|500000|0|0|0.5",
		"org-1|proj-a|2|3000003|2000000|1000003|0|3.000003",
		"org-1|proj-b|1|3000003|0|3000000|3|3.000003",
		"solo||1|700000|0|700000|0|0.7",
		"solo|solo|1|700000|0|700000|0|0.7",
	}
	for _, day := range []string{"2026-03-01", "2026-03-31"} { // any day names its month
		expect(t, "usage_by_organization_and_project "+day, run(t, conn, "usage_by_organization_and_project", map[string]string{"month": day}), want...)
	}
	// accounts_near_exhaustion burns a funded project's credit-funded requests from its
	// organization's balance: org-1's projects burned 1,000,001 + 3,000,003 in the 24 hours
	// (its own request was allowance-funded), so its 2,000,000 last 12 hours.
	expect(t, "accounts_near_exhaustion with organizations", run(t, conn, "accounts_near_exhaustion",
		map[string]string{"now": "2026-03-06 00:00:00", "lookback_hours": "24", "runway_hours": "100"}),
		"account_id|available_micros|burned_micros|burn_per_hour_micros|runway_hours",
		"org-1|2000000|4000004|166667|12")
	expect(t, "usage_by_organization_and_project April", run(t, conn, "usage_by_organization_and_project", map[string]string{"month": "2026-04-15"}),
		want[0], "org-1||1|9999|0|9999|0|0.009999", "org-1|proj-a|1|9999|0|9999|0|0.009999")
}

func cut(line string, fields int) string { return strings.Join(strings.Split(line, "|")[:fields], "|") }

func TestEveryNamedQueryIsTested(t *testing.T) {
	want := []string{"accounts_near_exhaustion", "allowance_vs_credits", "credits_by_tier_endpoint_daily",
		"duration_percentiles_by_endpoint", "rejection_reasons_over_time", "top_spenders", "usage_by_organization_and_project"}
	if got := sqlcli.NamedList(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("named queries %v; add a test for each new one", got)
	}
}

func TestPrintFormats(t *testing.T) {
	cols := []string{"a", "t", "m"}
	rows := [][]any{{int64(1), time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), map[string]string{"y": "2", "x": "1"}}}
	var b bytes.Buffer
	if err := sqlcli.Print(&b, "csv", cols, rows); err != nil {
		t.Fatal(err)
	}
	if b.String() != "a,t,m\n1,2026-01-02T03:04:05Z,\"{x=1, y=2}\"\n" {
		t.Fatalf("csv: %q", b.String())
	}
	b.Reset()
	_ = sqlcli.Print(&b, "json", cols, rows)
	if b.String() != `{"a":1,"m":{"x":"1","y":"2"},"t":"2026-01-02T03:04:05Z"}`+"\n" {
		t.Fatalf("json: %q", b.String())
	}
	b.Reset()
	_ = sqlcli.Print(&b, "table", cols, rows)
	if !strings.Contains(b.String(), "(1 rows)") {
		t.Fatalf("table: %q", b.String())
	}
}

func TestMainWithParametersNotConcatenation(t *testing.T) {
	cfg, _ := chtest.Open(t)
	t.Setenv("CLICKHOUSE_ADDR", cfg.Addr)
	t.Setenv("CLICKHOUSE_DATABASE", cfg.Database)
	var out, errb bytes.Buffer
	// A hostile value stays a value: it is bound as a String parameter, not parsed as SQL.
	code := sqlcli.Main(context.Background(), []string{"-format", "csv", "-param", "x=1'; DROP TABLE usage_events; --",
		"SELECT {x:String} AS x, count() AS tables FROM system.tables WHERE database = currentDatabase() AND name = 'usage_events'"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if out.String() != "x,tables\n1'; DROP TABLE usage_events; --,1\n" {
		t.Fatalf("output %q", out.String())
	}
	if code := sqlcli.Main(context.Background(), []string{"-format", "xml", "SELECT 1"}, &out, &errb); code != 2 {
		t.Fatalf("bad format: exit %d", code)
	}
	if code := sqlcli.Main(context.Background(), []string{"-rows-max", "1", "SELECT number FROM numbers(5)"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "rows-max") {
		t.Fatalf("rows-max: exit %d, %s", code, errb.String())
	}
	out.Reset()
	if code := sqlcli.Main(context.Background(), []string{"-named", "top_spenders", "-param", "from=2026-01-01 00:00:00",
		"-param", "to=2026-02-01 00:00:00", "-param", "limit=5"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "(0 rows)") {
		t.Fatalf("named: exit %d, %q %s", code, out.String(), errb.String())
	}
}
