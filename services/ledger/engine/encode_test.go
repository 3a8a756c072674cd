package engine

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/shared/events"
)

// TestHandEncodingMatchesJSON checks the hand-written encoders byte for byte against
// encoding/json, including strings that need escaping, and that events.Decode accepts them.
func TestHandEncodingMatchesJSON(t *testing.T) {
	at := time.Date(2026, 11, 2, 10, 0, 0, 123456789, time.UTC)
	les := []events.LedgerEntry{
		{EntryID: events.DerivedID("c", "a"), TransactionID: events.DerivedID("c", "tx"), AccountID: "acme", LedgerAccount: events.LedgerAvailable,
			AmountMicros: -42, Kind: "charge", CauseEventID: events.DerivedID("x", "y"), RequestID: "r<1>&\"q\"", EffectiveAt: at},
		{EntryID: events.DerivedID("c", "b"), TransactionID: events.DerivedID("c", "tx"), AccountID: "ünï", LedgerAccount: events.LedgerRevenue,
			AmountMicros: 42, Kind: "grant", CauseEventID: events.DerivedID("x", "y"), GrantID: "g\\1", EffectiveAt: at.Add(-time.Nanosecond * 123456789)},
		{EntryID: events.DerivedID("c", "h"), TransactionID: events.DerivedID("c", "tx"), AccountID: "org", LedgerAccount: events.LedgerHeld,
			AmountMicros: 7, Kind: "hold", CauseEventID: events.DerivedID("x", "y"), RequestID: "r1", ProjectID: "p&1", EffectiveAt: at},
	}
	for _, le := range les {
		want, err := events.NewWithID(le.EntryID, Source, le.EffectiveAt, le)
		if err != nil {
			t.Fatal(err)
		}
		wb, _ := want.Encode()
		got := events.AppendEnvelope(nil, le.EntryID, Source, events.TypeLedgerEntry, le.EffectiveAt, le.AccountID, events.AppendLedgerEntry(nil, &le))
		if !bytes.Equal(wb, got) {
			t.Fatalf("ledger entry:\njson %s\nhand %s", wb, got)
		}
		if _, err := events.Decode(got); err != nil {
			t.Fatal(err)
		}
	}
	for _, bu := range []events.BalanceUpdated{
		{AccountID: "acme", Tier: "pro", Priority: "", AvailableMicros: 5, HeldMicros: 6, OverageMicros: 7, Partition: 3, Offset: 99},
		{AccountID: "a&b", Tier: "free", Priority: "batch", Suspended: true, Allowance: []events.AllowanceWindow{{Window: "5h", Start: at, UsedMicros: 9}, {Window: "week", Start: at, UsedMicros: 10}}},
		{AccountID: "rich", Tier: "pro", Priority: "standard", AvailableMicros: 1<<63 - 1, Partition: 1, Offset: 4,
			Expiring: []events.ExpiringGrant{{ExpiresAt: at, RemainingMicros: 3}, {ExpiresAt: at.Add(time.Hour), RemainingMicros: 4 * events.MaxAmountMicros}}},
	} {
		id := events.DerivedID("b", bu.AccountID)
		want, err := events.NewWithID(id, Source, at, bu)
		if err != nil {
			t.Fatal(err)
		}
		wb, _ := want.Encode()
		got := appendBalanceEvent(nil, []byte(id), at, &bu)
		if !bytes.Equal(wb, got) {
			t.Fatalf("balance:\njson %s\nhand %s", wb, got)
		}
	}
	var raw json.RawMessage
	if err := json.Unmarshal(events.AppendString(nil, "x\u2028y"), &raw); err != nil {
		t.Fatal(err)
	}
}

// TestEntryEventMatchesJSON checks appendEntryEvent (ids derived in place) byte for byte
// against encoding/json of fold.Entry.Event, the published form.
func TestEntryEventMatchesJSON(t *testing.T) {
	at := time.Date(2026, 11, 2, 10, 0, 0, 123456789, time.FixedZone("x", 3600))
	for _, en := range []fold.Entry{
		{Cause: "0190f5a2-7c3e-7b1d-9f00-0123456789ab", AccountID: "acme", LedgerAccount: events.LedgerAvailable, AmountMicros: -42, Kind: "charge", RequestID: "r<1>&\"q\"", At: at},
		{Cause: "0190F5A2-7C3E-7B1D-9F00-0123456789AB", AccountID: "ünï", LedgerAccount: events.LedgerRevenue, AmountMicros: 42, Kind: "grant", GrantID: "g\\1", At: at.Add(-123456789)},
		{Cause: "0190f5a2-7c3e-7b1d-9f00-0123456789ac", AccountID: "a", LedgerAccount: events.LedgerHeld, AmountMicros: 0, Kind: "hold", RequestID: "r", GrantID: "g", At: at.UTC()},
		{Cause: "0190f5a2-7c3e-7b1d-9f00-0123456789ad", AccountID: "org", LedgerAccount: events.LedgerAvailable, AmountMicros: -7, Kind: "hold", RequestID: "r1", ProjectID: "p<1>", At: at},
	} {
		le := en.Event()
		want, err := events.NewWithID(le.EntryID, Source, le.EffectiveAt, le)
		if err != nil {
			t.Fatal(err)
		}
		wb, _ := want.Encode()
		got := appendEntryEvent([]byte("prefix"), &en, []byte(fold.TransactionID(en.Cause)))
		if !bytes.Equal(wb, got[len("prefix"):]) {
			t.Fatalf("ledger entry:\njson %s\nhand %s", wb, got[len("prefix"):])
		}
	}
}

func TestStateRecordRoundTrip(t *testing.T) {
	a := &fold.Account{ID: "acme", Offset: 7, AvailableMicros: 10, Grants: []fold.Grant{{ID: "g", Amount: 10, Remaining: 10}}}
	p, got, snap, err := decodeRecord(encodeAccountRecord(nil, 3, a))
	if err != nil || p != 3 || snap != nil || got.ID != "acme" || got.Offset != 7 || len(got.Grants) != 1 {
		t.Fatalf("account record: %d %+v %v %v", p, got, snap, err)
	}
	s := fold.Snapshot{Partition: 2, WatermarkNs: 1234567, Offset: -1}
	p, got, snap, err = decodeRecord(encodeSnapshotRecord(s))
	if err != nil || p != 2 || got != nil || *snap != s {
		t.Fatalf("snapshot record: %d %v %+v %v", p, got, snap, err)
	}
	for _, bad := range [][]byte{nil, {'A'}, {'Z', 1}, {'P', 1, 2}} {
		if _, _, _, err := decodeRecord(bad); err == nil {
			t.Fatalf("%q decoded", bad)
		}
	}
}
