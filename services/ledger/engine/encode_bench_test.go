package engine

import (
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/shared/events"
)

// BenchmarkEncodeEntryEvent: one ledger.entry output event (the journal's hot output).
func BenchmarkEncodeEntryEvent(b *testing.B) {
	at := time.Date(2026, 11, 2, 10, 0, 0, 123456789, time.UTC)
	en := fold.Entry{Cause: "0190f5a2-7c3e-7b1d-9f00-0123456789ab", AccountID: "acct-1", LedgerAccount: events.LedgerHeld,
		AmountMicros: -42_000, Kind: "charge", RequestID: "0190c2a1-7c1b-7d3e-9f00-1234567890ab", At: at}
	tx := []byte(fold.TransactionID(en.Cause))
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendEntryEvent(buf[:0], &en, tx)
	}
}

// BenchmarkEncodeBalanceEvent: one balance.updated output event with two allowance windows.
func BenchmarkEncodeBalanceEvent(b *testing.B) {
	at := time.Date(2026, 11, 2, 10, 0, 0, 123456789, time.UTC)
	bu := events.BalanceUpdated{AccountID: "acct-1", Tier: "pro", Priority: events.PriorityStandard, AvailableMicros: 5_000_000,
		HeldMicros: 42_000, Allowance: []events.AllowanceWindow{{Window: "5h", Start: at, UsedMicros: 9}, {Window: "week", Start: at, UsedMicros: 10}},
		Partition: 3, Offset: 123456}
	id := []byte(events.DerivedID("balance/3/123456", bu.AccountID))
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendBalanceEvent(buf[:0], id, at, &bu)
	}
}
