package admitter

import (
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// BenchmarkEncode: the admit path's event encoding (envelope and payload, with a fresh
// UUIDv7) of a request.started and a request.rejected, into a reused buffer.
func BenchmarkEncode(b *testing.B) {
	at := time.Date(2026, 11, 25, 10, 0, 0, 120_000_000, time.UTC)
	for _, d := range []events.Data{
		events.RequestStarted{RequestID: "0190c2a1-7c1b-7d3e-9f00-1234567890ab", AccountID: "acct-1", Endpoint: "codex.responses",
			Tier: "pro", Priority: events.PriorityStandard, Funding: events.FundingCredits,
			Estimate: events.Units{TokensIn: 1000, TokensOut: 500}, EstimateMicros: 10_000, HoldMicros: 10_000,
			HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: "v1", KeyID: "k1", ClientAddr: "203.0.113.7"},
		events.RequestRejected{RequestID: "0190c2a1-7c1b-7d3e-9f00-1234567890ab", AccountID: "acct-1", Endpoint: "sora.video",
			Tier: "free", Priority: events.PriorityBatch, Reason: "rate_limited", RetryAfterMs: 1500, EstimateMicros: 7_000,
			PriceBookVersion: "v1"},
	} {
		b.Run(d.EventType(), func(b *testing.B) {
			buf := make([]byte, 0, 1024)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if buf, _, err = encodeTo(buf, "admitter", at, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAppendAdmit: the admit answer's JSON.
func BenchmarkAppendAdmit(b *testing.B) {
	book := pricebook.Default()
	tb, err := decide.NewTable(book, decide.DefaultConfig)
	if err != nil {
		b.Fatal(err)
	}
	s := &Service{book: book}
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC).UnixMilli()
	tb.ApplyBalance(&events.BalanceUpdated{AccountID: "a1", Tier: "plus", Priority: events.PriorityStandard,
		AvailableMicros: 30_000_000, Partition: 0, Offset: 1})
	req := api.AdmitRequest{RequestID: "0190c2a1-7c1b-7d3e-9f00-1234567890ab", AccountID: "a1", Endpoint: "codex.responses",
		Estimate: events.Units{TokensIn: 997, TokensOut: 13}}
	var d decide.Decision
	if err := tb.Admit(&decide.Request{AccountID: req.AccountID, Endpoint: req.Endpoint, Estimate: req.Estimate}, now, &d); err != nil {
		b.Fatal(err)
	}
	if !d.Allowed || d.NumWindows == 0 {
		b.Fatalf("want an allowed decision with windows, got %+v", d)
	}
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		buf = s.appendAdmit(buf[:0], &req, &d)
	}
}
