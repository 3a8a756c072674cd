package events_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// oddStrings are strings every JSON escape applies to: HTML characters, quotes, the short
// escapes, other control bytes, DEL, U+2028/U+2029, multi-byte runes, invalid and truncated
// UTF-8, a surrogate encoded in UTF-8.
var oddStrings = []string{
	"", "plain-ascii_01", `"`, `\`, "<>&", "\b\f\n\r\t", "\x00\x01\x1f", "\x7f", "ä✓𝄞",
	"a\u2028b\u2029c", "\xff", "\xe2\x80", "x\xed\xa0\x80y", "ä<>&\"\\\x01\u2028\xff✓\n",
	"\xf0\x9f\x98", "é\xc3", "\u2027\u202a",
}

// TestAppendStringMatchesEncodingJSON: the one escaper writes what json.Marshal writes.
func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range oddStrings {
		checkAppendString(t, s)
	}
	// Every single byte and every rune of the Basic Multilingual Plane, alone and in context.
	for c := 0; c < 256; c++ {
		checkAppendString(t, string([]byte{byte(c)}))
	}
	for r := rune(0); r < 0x10000; r++ {
		checkAppendString(t, "a"+string(r)+"b")
	}
}

// FuzzAppendString: AppendString (of a string and of a []byte) equals json.Marshal's bytes on
// arbitrary input, including invalid UTF-8.
func FuzzAppendString(f *testing.F) {
	for _, s := range oddStrings {
		f.Add(s)
	}
	f.Fuzz(checkAppendString)
}

func checkAppendString(t *testing.T, s string) {
	t.Helper()
	want, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if got := events.AppendString([]byte("prefix"), s); !bytes.Equal(got, append([]byte("prefix"), want...)) {
		t.Fatalf("AppendString(%q) = %s, encoding/json: %s", s, got[len("prefix"):], want)
	}
	if got := events.AppendString(nil, []byte(s)); !bytes.Equal(got, want) {
		t.Fatalf("AppendString([]byte(%q)) = %s, encoding/json: %s", s, got, want)
	}
}

// appendEvent appends ev as the producers do: the envelope head, AppendData (or json.Marshal
// for the types it does not write), the closing brace.
func appendEvent(t *testing.T, ev events.Event) []byte {
	t.Helper()
	b := events.AppendEnvelopeHead(nil, ev.ID, ev.Source, ev.Type, ev.Time, ev.Subject)
	b, ok := events.AppendData(b, ev.Payload)
	if !ok {
		data, err := json.Marshal(ev.Payload)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, data...)
	}
	return append(b, '}')
}

// TestAppendEventMatchesEncode: for one sample of every type (and the hot types with strings
// needing every escape) the appended event is byte for byte Event.Encode's, and decodes to
// the same event.
func TestAppendEventMatchesEncode(t *testing.T) {
	at := time.Date(2026, 11, 25, 7, 0, 0, 123_000_000, time.UTC)
	cases := samples()
	appended := 0
	for _, s := range oddStrings {
		cases = append(cases,
			events.RequestRejected{RequestID: s, AccountID: "a1", Endpoint: s, Model: s, Tier: s, Priority: s,
				Reason: s, RetryAfterMs: -1, EstimateMicros: 1 << 62, PriceBookVersion: s, KeyID: s, ClientAddr: s},
			events.RequestStarted{RequestID: s, AccountID: "a1", Endpoint: s, Model: s, Tier: s, Priority: s, Funding: s,
				Estimate:      events.Units{VideoSeconds: 3, Resolution: s, TokensIn: 1, TokensOut: 2, ComputeMs: 4},
				HoldExpiresAt: at.Add(time.Nanosecond), PriceBookVersion: s, KeyID: s, ClientAddr: s},
			events.RequestStarted{RequestID: s, AccountID: "a1", FundingAccountID: s, Endpoint: s, Tier: s, Priority: s, Funding: s,
				HoldExpiresAt: at, PriceBookVersion: s},
			events.LedgerEntry{EntryID: s, TransactionID: s, AccountID: "a1", LedgerAccount: s, Kind: s, CauseEventID: s,
				RequestID: s, GrantID: s, EffectiveAt: at},
			events.LedgerEntry{EntryID: s, TransactionID: s, AccountID: "a1", LedgerAccount: s, Kind: s, CauseEventID: s,
				RequestID: s, ProjectID: s, EffectiveAt: at},
			events.BalanceUpdated{AccountID: "a1", Tier: s, Priority: s, Suspended: true,
				Allowance: []events.AllowanceWindow{{Window: s, Start: at}, {Window: "5h", Start: at.Add(time.Hour), UsedMicros: 9}},
				Expiring:  []events.ExpiringGrant{{ExpiresAt: at, RemainingMicros: 1}}, Partition: 7, Offset: 1 << 40},
			events.BalanceUpdated{AccountID: "a1", Tier: s, FundingAccountID: s,
				Projects: []events.ProjectSpend{{ProjectID: s, BudgetMicros: 5, PeriodStart: at, SpentMicros: -1}, {ProjectID: "p2"}}})
	}
	for i, d := range cases {
		if _, ok := events.AppendData(nil, d); ok {
			appended++
		}
		want, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := events.AppendData(nil, d); ok && !bytes.Equal(got, want) {
			t.Fatalf("case %d (%s): AppendData\n got %s\nwant %s", i, d.EventType(), got, want)
		}
		ev, err := events.New("src<&>\u2028", at, d)
		if err != nil {
			continue // payloads with odd strings that Validate refuses: the bytes were compared above
		}
		wantEv, err := ev.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got := appendEvent(t, ev)
		if !bytes.Equal(got, wantEv) {
			t.Fatalf("case %d (%s): appended event\n got %s\nwant %s", i, d.EventType(), got, wantEv)
		}
		back, err := events.Decode(got)
		if err != nil {
			t.Fatalf("case %d: Decode: %v", i, err)
		}
		if !reflect.DeepEqual(back, ev) {
			t.Fatalf("case %d: decoded\n%+v\nwant\n%+v", i, back, ev)
		}
	}
	if appended < 6*len(oddStrings) {
		t.Fatalf("AppendData wrote only %d payloads", appended)
	}
	// Times encoding/json writes otherwise are left to it.
	local := at.In(time.FixedZone("x", 3600))
	for _, d := range []events.Data{events.RequestStarted{HoldExpiresAt: local}, events.LedgerEntry{EffectiveAt: local},
		events.BalanceUpdated{Allowance: []events.AllowanceWindow{{Start: local}}},
		events.BalanceUpdated{Expiring: []events.ExpiringGrant{{ExpiresAt: at.AddDate(10_000, 0, 0)}}},
		events.BalanceUpdated{Projects: []events.ProjectSpend{{PeriodStart: local}}},
		events.RequestFinished{}} {
		if b, ok := events.AppendData([]byte("x"), d); ok || string(b) != "x" {
			t.Fatalf("%#v: AppendData = %q, %v; want nothing appended, false", d, b, ok)
		}
	}
}

// FuzzAppendEnvelope: an appended request.started or request.rejected event with arbitrary
// strings is Event.Encode's bytes, and Decode reads back the same event.
func FuzzAppendEnvelope(f *testing.F) {
	for _, s := range oddStrings {
		f.Add("a1", s, s, int64(5), int64(1_700_000_000_123_456_789))
	}
	f.Add("acct-1", "codex.responses", "v1", int64(0), int64(0))
	f.Fuzz(func(t *testing.T, account, s1, s2 string, n, ns int64) {
		at := time.Unix(0, ns).UTC()
		for _, d := range []events.Data{
			events.RequestStarted{RequestID: s1, AccountID: account, Endpoint: s1, Model: s2, Tier: s2, Priority: events.PriorityStandard,
				Funding: events.FundingCredits, Estimate: events.Units{TokensIn: n, Resolution: s2}, EstimateMicros: n, HoldMicros: n,
				HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: s2, KeyID: s1, ClientAddr: s2},
			events.RequestRejected{RequestID: s1, AccountID: account, Endpoint: s2, Tier: s1, Priority: events.PriorityBatch,
				Reason: s2, RetryAfterMs: n, EstimateMicros: n, PriceBookVersion: s1},
			events.LedgerEntry{EntryID: s1, TransactionID: s2, AccountID: account, LedgerAccount: events.LedgerHeld, AmountMicros: n,
				Kind: "charge", CauseEventID: s1, RequestID: s2, ProjectID: s1, EffectiveAt: at},
		} {
			if want, err := json.Marshal(d); err == nil {
				if got, ok := events.AppendData(nil, d); ok && !bytes.Equal(got, want) {
					t.Fatalf("AppendData\n got %s\nwant %s", got, want)
				}
			}
			ev, err := events.New(s2, at, d)
			if err != nil {
				continue
			}
			want, err := ev.Encode()
			if err != nil {
				t.Fatal(err)
			}
			got := appendEvent(t, ev)
			if !bytes.Equal(got, want) {
				t.Fatalf("appended event\n got %s\nwant %s", got, want)
			}
			back, err := events.Decode(got)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(back, ev) {
				t.Fatalf("decoded\n%+v\nwant\n%+v", back, ev)
			}
		}
	})
}

// TestAppendAllocs: appending an envelope and a hot payload into a buffer with room does not
// allocate.
func TestAppendAllocs(t *testing.T) {
	at := time.Date(2026, 11, 25, 7, 0, 0, 0, time.UTC)
	rs := samples()[0].(events.RequestStarted)
	le := events.LedgerEntry{EntryID: "e1", TransactionID: "t1", AccountID: "a1", LedgerAccount: events.LedgerHeld,
		AmountMicros: -10, Kind: "charge", CauseEventID: "c1", RequestID: "r\u2028<1>", EffectiveAt: at}
	bu := events.BalanceUpdated{AccountID: "a1", Tier: "pro", Priority: events.PriorityStandard,
		Allowance: []events.AllowanceWindow{{Window: "5h", Start: at}}, Expiring: []events.ExpiringGrant{{ExpiresAt: at}}}
	var d events.Data = rs
	id := []byte("0190c2a1-0000-7000-8000-000000000000")
	buf := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() {
		b := events.AppendEnvelopeHead(buf[:0], id, "admitter", events.TypeRequestStarted, at, rs.AccountID)
		b, _ = events.AppendData(b, d)
		b = events.AppendRequestStarted(b, &rs)
		b = events.AppendLedgerEntry(b, &le)
		b = events.AppendBalanceUpdated(b, &bu)
		_ = events.AppendString(b, "\xff ä \n")
	}); n != 0 {
		t.Fatalf("%v allocations per run, want 0", n)
	}
}

// BenchmarkAppendString: the escaper on a plain id and on a string needing escapes.
func BenchmarkAppendString(b *testing.B) {
	for _, s := range []string{"0190c2a1-7c1b-7d3e-9f00-1234567890ab", "ä<b>&\"c\"\n\u2028\xff-0190c2a1-7c1b-7d3e"} {
		buf := make([]byte, 0, 256)
		b.Run(map[bool]string{true: "plain", false: "escapes"}[s[0] == '0'], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				buf = events.AppendString(buf[:0], s)
			}
		})
	}
}

// BenchmarkAppendEvent: a request.started event appended (the admit path's encoding) against
// Event.Encode.
func BenchmarkAppendEvent(b *testing.B) {
	at := time.Date(2026, 11, 25, 7, 0, 0, 0, time.UTC)
	ev, err := events.New("admitter", at, samples()[0])
	if err != nil {
		b.Fatal(err)
	}
	b.Run("Append", func(b *testing.B) {
		buf := make([]byte, 0, 1024)
		b.ReportAllocs()
		for b.Loop() {
			buf = events.AppendEnvelopeHead(buf[:0], ev.ID, ev.Source, ev.Type, ev.Time, ev.Subject)
			buf, _ = events.AppendData(buf, ev.Payload)
			buf = append(buf, '}')
		}
	})
	b.Run("Encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ev.Encode(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
