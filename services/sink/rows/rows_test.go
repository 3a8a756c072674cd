package rows_test

import (
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/events"
)

var at = time.Date(2026, 3, 1, 12, 0, 0, 0, time.FixedZone("x", 3600))

func ev(t *testing.T, d events.Data) events.Event {
	t.Helper()
	e, err := events.New("test", at, d)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestFromEventMapsEveryStoredType(t *testing.T) {
	pos := rows.Position{Topic: "tally.events", Partition: 2, Offset: 41}
	exp := at.Add(time.Minute)
	cases := []struct {
		d     events.Data
		check func(*rows.Usage) bool
	}{
		{events.RequestStarted{RequestID: "r", AccountID: "a", Endpoint: "e", Tier: "pro", Priority: "batch", Funding: "credits",
			EstimateMicros: 7, HoldMicros: 7, HoldExpiresAt: exp, PriceBookVersion: "v", KeyID: "k", ClientAddr: "c", Estimate: events.Units{TokensIn: 3}},
			func(u *rows.Usage) bool {
				return u.RequestID == "r" && u.HoldMicros == 7 && u.TokensIn == 3 && u.HoldExpiresAt.Equal(exp) && u.KeyID == "k" && u.Funding == "credits"
			}},
		{events.RequestRejected{RequestID: "r", AccountID: "a", Endpoint: "e", Tier: "pro", Priority: "batch", Reason: "rate_limited", RetryAfterMs: 5, PriceBookVersion: "v"},
			func(u *rows.Usage) bool {
				return u.Reason == "rate_limited" && u.RetryAfterMs == 5 && u.HoldExpiresAt.Unix() == 0
			}},
		{events.RequestFinished{RequestID: "r", AccountID: "a", Endpoint: "e", Status: "failed", CostMicros: 9, DurationMs: 11, PriceBookVersion: "v", Usage: events.Units{VideoSeconds: 2, Resolution: "720p"},
			AllowanceMicros: 2, CreditsMicros: 3, OverageMicros: 4},
			func(u *rows.Usage) bool {
				return u.Status == "failed" && u.CostMicros == 9 && u.DurationMs == 11 && u.VideoSeconds == 2 && u.Resolution == "720p" &&
					u.PaidAllowanceMicros == 2 && u.PaidCreditsMicros == 3 && u.OverageMicros == 4
			}},
		{events.RequestExpired{RequestID: "r", AccountID: "a", Endpoint: "e", Funding: "split", HoldMicros: 4, AllowanceMicros: 2, ReleasedMicros: 6, StartedEventID: "s", ExpiredAt: exp},
			func(u *rows.Usage) bool {
				return u.HoldMicros == 4 && u.AllowanceMicros == 2 && u.AmountMicros == 6 && u.Attrs["started_event_id"] == "s" && u.Funding == "split"
			}},
		{events.CreditsGranted{GrantID: "g", AccountID: "a", AmountMicros: 100, Source: "purchase", Priority: 2},
			func(u *rows.Usage) bool {
				return u.AmountMicros == 100 && u.Reason == "purchase" && u.Attrs["grant_id"] == "g"
			}},
		{events.CreditsGranted{GrantID: "purchase:o1", AccountID: "a", AmountMicros: 100, Source: "purchase", PaymentRef: "pi_1"},
			func(u *rows.Usage) bool {
				return u.Attrs["grant_id"] == "purchase:o1" && u.Attrs["payment_ref"] == "pi_1"
			}},
		{events.CreditsAdjusted{AdjustmentID: "j", AccountID: "a", AmountMicros: -5, Reason: "refund"},
			func(u *rows.Usage) bool { return u.AmountMicros == -5 && u.Reason == "refund" }},
		{events.AccountUpdated{AccountID: "a", Tier: "free", Priority: "standard", Suspended: true},
			func(u *rows.Usage) bool { return u.Tier == "free" && u.Attrs["suspended"] == "true" }},
		{events.AccountUpdated{AccountID: "a", Tier: "free", Priority: "standard", OrganizationID: func() *string { s := "org-1"; return &s }()},
			func(u *rows.Usage) bool { return u.Attrs["organization_id"] == "org-1" }},
		{events.SubscriptionChanged{AccountID: "a", PlanID: "pro", AnchorAt: exp},
			func(u *rows.Usage) bool {
				return u.Attrs["plan_id"] == "pro" && u.Attrs["anchor_at"] == exp.UTC().Format(time.RFC3339Nano)
			}},
		{events.AbuseFlagged{FlagID: "f", AccountID: "a", Rule: "burst", Score: 3, Action: "throttle", WindowStart: at, WindowEnd: exp, Evidence: map[string]string{"x": "1"}},
			func(u *rows.Usage) bool {
				return u.Reason == "burst" && u.Score == 3 && u.Status == "throttle" && u.Attrs["flag_id"] == "f" && u.Attrs["x"] == "1"
			}},
	}
	for _, c := range cases {
		e := ev(t, c.d)
		u, l, ok := rows.FromEvent(e, pos)
		if !ok || u == nil || l != nil {
			t.Fatalf("%s: ok=%v usage=%v ledger=%v", e.Type, ok, u != nil, l != nil)
		}
		if u.EventID != e.ID || u.Type != e.Type || u.AccountID != "a" || u.Pos != pos || u.Time.Location() != time.UTC || !u.Time.Equal(at) {
			t.Errorf("%s: envelope fields %+v", e.Type, u)
		}
		if !c.check(u) {
			t.Errorf("%s: payload fields %+v", e.Type, u)
		}
	}
	le := ev(t, events.LedgerEntry{EntryID: "x", TransactionID: "t", AccountID: "a", LedgerAccount: events.LedgerHeld, AmountMicros: -3, Kind: "hold", CauseEventID: "c", EffectiveAt: at})
	u, l, ok := rows.FromEvent(le, pos)
	if !ok || u != nil || l == nil || l.AmountMicros != -3 || l.EventID != le.ID || l.Pos != pos {
		t.Fatalf("ledger entry: %v %+v %+v", ok, u, l)
	}
	tick, err := events.New("ledger", at, events.ClockTick{Partition: 2})
	if err != nil {
		t.Fatal(err)
	}
	if u, l, ok := rows.FromEvent(tick, pos); !ok || u != nil || l != nil {
		t.Fatalf("clock tick: ok=%v usage=%v ledger=%v, want skipped without a row and without dead-lettering", ok, u, l)
	}
	bu := ev(t, events.BalanceUpdated{AccountID: "a"})
	if _, _, ok := rows.FromEvent(bu, pos); ok {
		t.Fatal("balance.updated must not be stored from an input topic")
	}
}

func TestTokenIsAFunctionOfTheRange(t *testing.T) {
	r := rows.Range{Topic: "t", Partition: 1, First: 10, Last: 20}
	if r.Token() != r.Token() {
		t.Fatal("token not deterministic")
	}
	for _, o := range []rows.Range{{Topic: "u", Partition: 1, First: 10, Last: 20}, {Topic: "t", Partition: 2, First: 10, Last: 20},
		{Topic: "t", Partition: 1, First: 11, Last: 20}, {Topic: "t", Partition: 1, First: 10, Last: 21}} {
		if o.Token() == r.Token() {
			t.Fatalf("ranges %v and %v share a token", r, o)
		}
	}
}

func TestBatchAddKeepsRangeAndBounds(t *testing.T) {
	var b rows.Batch
	b.Add(rows.Position{Topic: "t", Partition: 3, Offset: 5}, 100, &rows.Usage{}, nil)
	b.Add(rows.Position{Topic: "t", Partition: 3, Offset: 6}, 50, nil, nil) // dead-lettered: no row
	b.Add(rows.Position{Topic: "t", Partition: 3, Offset: 7}, 10, nil, &rows.Ledger{})
	if b.Range != (rows.Range{Topic: "t", Partition: 3, First: 5, Last: 7}) || b.Rows() != 2 || b.Messages != 3 || b.Bytes != 160 {
		t.Fatalf("batch %+v", b)
	}
}

func BenchmarkFromEvent(b *testing.B) {
	e, _ := events.New("bench", at, events.RequestFinished{RequestID: "r", AccountID: "a", Endpoint: "e", Status: "succeeded",
		CostMicros: 9, DurationMs: 11, PriceBookVersion: "v"})
	pos := rows.Position{Topic: "t"}
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = rows.FromEvent(e, pos)
	}
}

// BenchmarkDecodeAndMap is the sink's per-message CPU before ClickHouse: an events.Decoder
// (the strict shared decoder, with its fast path) plus FromEvent.
func BenchmarkDecodeAndMap(b *testing.B) {
	e, _ := events.New("bench", at, events.RequestFinished{RequestID: "req-123456", AccountID: "acct-42", Endpoint: "video.generate",
		Model: "m1", Status: "succeeded", CostMicros: 1234, DurationMs: 1500, PriceBookVersion: "2026-01", KeyID: "key-acct-42",
		ClientAddr: "10.0.0.1", Usage: events.Units{VideoSeconds: 4}})
	raw, _ := e.Encode()
	pos := rows.Position{Topic: "t"}
	var dec events.Decoder // as each of the pipeline's decode workers
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		ev, err := dec.Decode(raw)
		if err != nil {
			b.Fatal(err)
		}
		_, _, _ = rows.FromEvent(ev, pos)
	}
}

func TestGroupTokenAndMerge(t *testing.T) {
	a := rows.Range{Topic: "e", Partition: 0, First: 0, Last: 9}
	b := rows.Range{Topic: "e", Partition: 1, First: 5, Last: 7}
	c := rows.Range{Topic: "j", Partition: 0, First: 3, Last: 3}
	if rows.GroupToken([]rows.Range{a}) != a.Token() {
		t.Error("a one-range group must keep the range's token")
	}
	if rows.GroupToken([]rows.Range{a, b, c}) != rows.GroupToken([]rows.Range{c, a, b}) {
		t.Error("the token depends on the order of the ranges")
	}
	for _, other := range [][]rows.Range{{a, b}, {a, c}, {a, b, {Topic: "j", Partition: 0, First: 3, Last: 4}}, {a, b, {Topic: "j", Partition: 1, First: 3, Last: 3}}} {
		if rows.GroupToken(other) == rows.GroupToken([]rows.Range{a, b, c}) {
			t.Errorf("%v has the token of another set of ranges", other)
		}
	}
	batch := func(r rows.Range, accts ...string) *rows.Batch {
		x := &rows.Batch{}
		for i, acct := range accts {
			x.Add(rows.Position{Topic: r.Topic, Partition: r.Partition, Offset: r.First + int64(i)}, 10, &rows.Usage{AccountID: acct}, nil)
		}
		x.Add(rows.Position{Topic: r.Topic, Partition: r.Partition, Offset: r.Last}, 5, nil, &rows.Ledger{AccountID: "l-" + r.Topic})
		return x
	}
	m := rows.Merge([]*rows.Batch{batch(c), batch(b, "b1", "b2"), batch(a, "a1")})
	var got []string
	for _, u := range m.Usage {
		got = append(got, u.AccountID)
	}
	if strings.Join(got, ",") != "a1,b1,b2" || len(m.Ledger) != 3 || m.Ledger[2].AccountID != "l-j" {
		t.Fatalf("merged rows out of range order: usage %v, ledger %d", got, len(m.Ledger))
	}
	if m.Messages != 6 || m.Bytes != 3*5+3*10 || len(m.Ranges) != 3 || m.Ranges[0] != a || m.Ranges[2] != c {
		t.Fatalf("merged batch: %d messages, %d bytes, ranges %v", m.Messages, m.Bytes, m.Ranges)
	}
	if m.Token() != rows.GroupToken([]rows.Range{a, b, c}) {
		t.Fatal("a merged batch's token is not its ranges' group token")
	}
	m.RecordedToken = "recorded"
	if m.Token() != "recorded" {
		t.Fatal("a re-formed batch must carry its recorded token")
	}
}

// TestFromEventFundedRequest: a request funded by an organization's shared balance has the
// organization as its envelope subject (the Kafka key) but stays the project's request: the
// row's account_id is the payload's account (the project), whose request ids are its own, and
// the organization is kept beside it. The events go through the pipeline's decoder (its fast
// path for started / finished, the general one for expired).
func TestFromEventFundedRequest(t *testing.T) {
	pos := rows.Position{Topic: "tally.events", Partition: 1, Offset: 7}
	exp := at.Add(time.Minute)
	for _, d := range []events.Data{
		events.RequestStarted{RequestID: "r", AccountID: "proj", FundingAccountID: "org", Endpoint: "e", Tier: "pro", Priority: "batch",
			Funding: "credits", EstimateMicros: 7, HoldMicros: 7, HoldExpiresAt: exp, PriceBookVersion: "v"},
		events.RequestFinished{RequestID: "r", AccountID: "proj", FundingAccountID: "org", Endpoint: "e", Status: "succeeded",
			CostMicros: 9, CreditsMicros: 9, PriceBookVersion: "v"},
		events.RequestExpired{RequestID: "r", AccountID: "proj", FundingAccountID: "org", Endpoint: "e", Funding: "credits",
			HoldMicros: 7, ReleasedMicros: 7, StartedEventID: "s", ExpiredAt: exp},
	} {
		e := ev(t, d)
		if e.Subject != "org" {
			t.Fatalf("%s: subject %q, want the funding account", e.Type, e.Subject)
		}
		raw, err := e.Encode()
		if err != nil {
			t.Fatal(err)
		}
		var dec events.Decoder
		got, err := dec.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		u, _, ok := rows.FromEvent(got, pos)
		if !ok || u == nil {
			t.Fatalf("%s: no row", e.Type)
		}
		if u.AccountID != "proj" || u.FundingAccountID != "org" || u.RequestID != "r" {
			t.Errorf("%s: account_id %q funding_account_id %q request_id %q, want proj, org, r", e.Type, u.AccountID, u.FundingAccountID, u.RequestID)
		}
	}
	// Unfunded: the account funds itself, funding_account_id is ''.
	u, _, _ := rows.FromEvent(ev(t, events.RequestFinished{RequestID: "r", AccountID: "a", Endpoint: "e", Status: "succeeded", PriceBookVersion: "v"}), pos)
	if u.AccountID != "a" || u.FundingAccountID != "" {
		t.Errorf("unfunded: account_id %q funding_account_id %q", u.AccountID, u.FundingAccountID)
	}
	// A rejection is keyed by the project and carries no funding account.
	u, _, _ = rows.FromEvent(ev(t, events.RequestRejected{RequestID: "r", AccountID: "proj", Endpoint: "e", Tier: "pro", Priority: "batch",
		Reason: "budget_exhausted", PriceBookVersion: "v"}), pos)
	if u.AccountID != "proj" || u.FundingAccountID != "" {
		t.Errorf("rejected: account_id %q funding_account_id %q", u.AccountID, u.FundingAccountID)
	}
}

// TestFromEventAccountUpdatedOrganizationFields: account.updated's funding_account_id is
// kept in attrs (as organization_id is), "" (back to the account's own balance) distinct
// from absent (unchanged).
func TestFromEventAccountUpdatedOrganizationFields(t *testing.T) {
	pos := rows.Position{Topic: "tally.events"}
	str := func(s string) *string { return &s }
	for _, c := range []struct {
		d    events.AccountUpdated
		want map[string]string
	}{
		{events.AccountUpdated{AccountID: "proj", Tier: "pro", Priority: "standard", FundingAccountID: str("org")},
			map[string]string{"suspended": "false", "funding_account_id": "org"}},
		{events.AccountUpdated{AccountID: "proj", Tier: "pro", Priority: "standard", FundingAccountID: str("")},
			map[string]string{"suspended": "false", "funding_account_id": ""}},
		{events.AccountUpdated{AccountID: "proj", Tier: "pro", Priority: "standard"},
			map[string]string{"suspended": "false"}},
	} {
		u, _, ok := rows.FromEvent(ev(t, c.d), pos)
		if !ok || !maps.Equal(u.Attrs, c.want) {
			t.Errorf("%+v: attrs %v, want %v", c.d, u.Attrs, c.want)
		}
		if u.FundingAccountID != "" {
			t.Errorf("%+v: funding_account_id column %q, want '' (a request's column)", c.d, u.FundingAccountID)
		}
	}
}

// TestFromEventBudgetChanged: budget.changed is stored as the funding account's row (its
// subject) with the budget in attrs, remove only when true, and no money or tier columns.
func TestFromEventBudgetChanged(t *testing.T) {
	pos := rows.Position{Topic: "tally.events"}
	for _, c := range []struct {
		d    events.BudgetChanged
		want map[string]string
	}{
		{events.BudgetChanged{AccountID: "org", ProjectID: "proj", BudgetMicros: 5_000_000, AdminKeyID: "ops"},
			map[string]string{"project_id": "proj", "budget_micros": "5000000"}},
		{events.BudgetChanged{AccountID: "org", ProjectID: "proj"}, map[string]string{"project_id": "proj", "budget_micros": "0"}},
		{events.BudgetChanged{AccountID: "org", ProjectID: "proj", Remove: true},
			map[string]string{"project_id": "proj", "budget_micros": "0", "remove": "true"}},
	} {
		u, l, ok := rows.FromEvent(ev(t, c.d), pos)
		if !ok || u == nil || l != nil {
			t.Fatalf("%+v: usage %v ledger %v ok %v, want a usage row", c.d, u, l, ok)
		}
		if !maps.Equal(u.Attrs, c.want) || u.AccountID != "org" || u.Type != events.TypeBudgetChanged ||
			u.AmountMicros != 0 || u.Tier != "" || u.Priority != "" || u.FundingAccountID != "" {
			t.Errorf("%+v: row %+v, want account org, attrs %v and nothing else", c.d, u, c.want)
		}
	}
}
