package engine

import (
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// BenchmarkDecode measures events.Decode (the shared strict decoder) on a request.started,
// the most common input: it bounds the ledger's end-to-end rate per core.
func BenchmarkDecode(b *testing.B) {
	at := time.Now()
	e, _ := events.New("bench", at, events.RequestStarted{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses", Tier: "pro",
		Priority: events.PriorityStandard, Funding: events.FundingCredits, HoldMicros: 10_000, EstimateMicros: 10_000, HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: "v"})
	v, _ := e.Encode()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := events.Decode(v); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkDecodeFast measures the engine's decoder (the fast path, see decode.go) on the
// same request.started.
func BenchmarkDecodeFast(b *testing.B) {
	at := time.Now()
	e, _ := events.New("bench", at, events.RequestStarted{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses", Tier: "pro",
		Priority: events.PriorityStandard, Funding: events.FundingCredits, HoldMicros: 10_000, EstimateMicros: 10_000, HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: "v"})
	v, _ := e.Encode()
	var d decoder
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := d.Decode(v); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
