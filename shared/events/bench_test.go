package events_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// BenchmarkDecode measures decoding (strict, validated) one request.started event, the
// consumers' per-message cost.
func BenchmarkDecode(b *testing.B) {
	ev, err := events.New("bench", time.Now(), samples()[0])
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := ev.Encode()
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := events.Decode(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecoder compares events.Decode with a Decoder (the fast path, see decoder.go) on
// each hot type, in the shape the producers write.
func BenchmarkDecoder(b *testing.B) {
	at := time.Now()
	for _, d := range []events.Data{
		events.RequestStarted{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses", Tier: "pro",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, HoldMicros: 10_000, EstimateMicros: 10_000,
			HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: "v"},
		events.RequestFinished{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses", Status: events.StatusSucceeded,
			CostMicros: 7_000, DurationMs: 1234, PriceBookVersion: "v"},
		events.RequestRejected{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses", Tier: "free",
			Priority: events.PriorityBatch, Reason: "rate_limited", RetryAfterMs: 1500, EstimateMicros: 7_000, PriceBookVersion: "v"},
		events.LedgerEntry{EntryID: events.DerivedID("c1", "a"), TransactionID: events.DerivedID("c1", "t"), AccountID: "acct-1",
			LedgerAccount: events.LedgerHeld, AmountMicros: -7_000, Kind: "charge", CauseEventID: events.DerivedID("c1", "c"),
			RequestID: "r1", EffectiveAt: at},
	} {
		e, err := events.New("bench", at, d)
		if err != nil {
			b.Fatal(err)
		}
		raw, _ := e.Encode()
		name := strings.TrimSuffix(strings.TrimPrefix(d.EventType(), "tally."), ".v1")
		b.Run(name+"/Decode", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := events.Decode(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/Decoder", func(b *testing.B) {
			var dec events.Decoder
			b.ReportAllocs()
			for b.Loop() {
				if _, err := dec.Decode(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
