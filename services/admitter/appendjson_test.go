package admitter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// TestAppendAdmitMatchesEncodingJSON: the hand-written admit answer is byte for byte what
// encoding/json makes of admitResponse, for allowed and denied decisions of every kind.
func TestAppendAdmitMatchesEncodingJSON(t *testing.T) {
	book := pricebook.Default()
	book.Version = "v<1>&\"x\"ä"
	tb, err := decide.NewTable(book, decide.DefaultConfig)
	if err != nil {
		t.Fatal(err)
	}
	s := &Service{book: book}
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC).UnixMilli()
	tiers := []string{"free", "plus", "pro", "enterprise"}
	for i := range 8 {
		tb.ApplyBalance(&events.BalanceUpdated{AccountID: fmt.Sprintf("a%d", i), Tier: tiers[i%4],
			Priority: events.PriorityStandard, AvailableMicros: int64(i) * 3_000_000, Partition: 0, Offset: int64(i)})
	}
	tb.ApplyBalance(&events.BalanceUpdated{AccountID: "susp", Tier: "pro", Suspended: true, Partition: 0, Offset: 9})
	// Projects funded by an organization (the answer names it), one with a small budget.
	month := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	tb.ApplyBalance(&events.BalanceUpdated{AccountID: "org<ä>", Tier: "plus", AvailableMicros: 50_000_000, Partition: 1, Offset: 1,
		Projects: []events.ProjectSpend{{ProjectID: "proj-b", BudgetMicros: 100_000, PeriodStart: month}}})
	for _, p := range []string{"proj-a", "proj-b"} {
		tb.ApplyBalance(&events.BalanceUpdated{AccountID: p, Tier: "enterprise", FundingAccountID: "org<ä>", Partition: 2, Offset: 1})
	}
	seen := map[string]bool{}
	for i := range 400 {
		req := api.AdmitRequest{RequestID: fmt.Sprintf("r-%d-ä\x01<", i), AccountID: fmt.Sprintf("a%d", i%8),
			Endpoint: []string{"codex.responses", "sora.video"}[i%2], Priority: []string{"", "batch", "critical"}[i%3],
			Estimate: events.Units{TokensIn: int64(i) * 997, TokensOut: int64(i) * 13, VideoSeconds: int64(i % 50), Resolution: "720p"}}
		if i%37 == 0 {
			req.AccountID = "susp"
		}
		if i%5 == 0 {
			req.AccountID = []string{"proj-a", "proj-b"}[i/5%2]
		}
		var d decide.Decision
		if err := tb.Admit(&decide.Request{AccountID: req.AccountID, Endpoint: req.Endpoint, Priority: req.Priority,
			Estimate: req.Estimate}, now+int64(i)*7_000, &d); err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(s.admitResponse(&req, &d))
		if err != nil {
			t.Fatal(err)
		}
		if got := s.appendAdmit(nil, &req, &d); !bytes.Equal(got, want) {
			t.Fatalf("decision %d differs:\n got %s\nwant %s", i, got, want)
		}
		seen[fmt.Sprintf("%v/%s/%d/%s", d.Allowed, d.Reason, d.NumWindows, d.FundingAccountID)] = true
	}
	for _, k := range []string{"true//2/org<ä>", "false/budget_exhausted/2/org<ä>"} {
		if !seen[k] {
			t.Fatalf("decision %s not covered: %v", k, seen)
		}
	}
	if len(seen) < 5 {
		t.Fatalf("too few kinds of decisions covered: %v", seen)
	}
}

// TestAppendPayloadMatchesEncodingJSON: the hand-written event payloads are byte for byte
// what encoding/json makes of the events types.
func TestAppendPayloadMatchesEncodingJSON(t *testing.T) {
	at := time.Date(2026, 11, 25, 10, 5, 0, 120_000_000, time.UTC)
	odd := "ä<>&\"\\\x01\u2028\xff✓"
	cases := []events.Data{
		events.RequestStarted{RequestID: "r1", AccountID: "a", Endpoint: "e", Tier: "t", Priority: "standard",
			Funding: "credits", HoldExpiresAt: at, PriceBookVersion: "v"},
		events.RequestStarted{RequestID: odd, AccountID: odd, Endpoint: odd, Model: odd, Tier: odd, Priority: odd,
			Funding: odd, Estimate: events.Units{VideoSeconds: 3, Resolution: odd, TokensIn: 1, TokensOut: 2, ComputeMs: 4},
			EstimateMicros: 7, HoldMicros: 5, AllowanceMicros: 2, HoldExpiresAt: at.Add(time.Nanosecond),
			PriceBookVersion: odd, KeyID: odd, ClientAddr: odd},
		events.RequestStarted{RequestID: "r", Estimate: events.Units{TokensOut: 9}, HoldExpiresAt: at.Truncate(time.Second), ClientAddr: "::1"},
		events.RequestStarted{RequestID: "r1", AccountID: "p", FundingAccountID: "org", Endpoint: "e", Tier: "t", Priority: "standard",
			Funding: "credits", HoldExpiresAt: at, PriceBookVersion: "v"},
		events.RequestStarted{RequestID: odd, AccountID: odd, FundingAccountID: odd + "2", Endpoint: odd, Model: odd, Tier: odd,
			Priority: odd, Funding: odd, HoldExpiresAt: at, PriceBookVersion: odd, KeyID: odd, ClientAddr: odd},
		events.RequestRejected{RequestID: "r2", AccountID: "a", Endpoint: "e", Tier: "t", Priority: "batch",
			Reason: "rate_limited", RetryAfterMs: 10, PriceBookVersion: "v1", KeyID: "k"},
		events.RequestRejected{RequestID: odd, AccountID: odd, Endpoint: odd, Model: odd, Tier: odd, Priority: odd,
			Reason: odd, RetryAfterMs: -1, EstimateMicros: 1 << 62, PriceBookVersion: odd, KeyID: odd, ClientAddr: odd},
		events.RequestRejected{},
	}
	for i, d := range cases {
		want, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := events.AppendData(nil, d)
		if !ok || !bytes.Equal(got, want) {
			t.Fatalf("case %d differs:\n got %s\nwant %s", i, got, want)
		}
	}
	if _, ok := events.AppendData(nil, events.RequestStarted{HoldExpiresAt: at.In(time.FixedZone("x", 3600))}); ok {
		t.Fatal("a non-UTC time must take encoding/json's path")
	}
	if _, ok := events.AppendData(nil, events.RequestFinished{}); ok {
		t.Fatal("request.finished has no hand-written encoder")
	}
}
