package events_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// randomLog returns n valid events of every type the ledger and the sink read, in the shapes
// the producers write (optional fields sometimes set), with re-sent duplicates. The same seed
// gives the same log.
func randomLog(seed uint64, n, accounts int, t0 time.Time) []events.Event {
	r := rand.New(rand.NewPCG(seed, seed^0x9e37))
	out := make([]events.Event, 0, n)
	add := func(at time.Time, d events.Data) {
		e, err := events.NewWithID(events.DerivedID(fmt.Sprint("gen-", seed), fmt.Sprint(len(out))), "gen", at, d)
		if err != nil {
			panic(err)
		}
		out = append(out, e)
	}
	opt := func(s string) string {
		if r.IntN(3) == 0 {
			return s
		}
		return ""
	}
	now := t0
	for len(out) < n {
		now = now.Add(time.Duration(r.IntN(501)) * time.Millisecond)
		acct := fmt.Sprint("acct-", r.IntN(accounts))
		req := fmt.Sprint("r", len(out))
		switch k := r.IntN(100); {
		case k < 30:
			st := events.RequestStarted{RequestID: req, AccountID: acct, Endpoint: "codex.responses", Model: opt("m1"), Tier: "plus",
				Priority: events.PriorityStandard, Funding: events.FundingCredits, HoldMicros: int64(r.IntN(400_000)),
				HoldExpiresAt: now.Add(5 * time.Minute), PriceBookVersion: "v1", KeyID: opt("k1"), ClientAddr: opt("10.0.0.1")}
			st.EstimateMicros = st.HoldMicros
			if r.IntN(5) == 0 {
				st.Funding, st.HoldMicros, st.AllowanceMicros = events.FundingAllowance, 0, int64(r.IntN(100_000))
			} else if st.HoldMicros > 0 && r.IntN(5) == 0 {
				st.Funding, st.AllowanceMicros = events.FundingSplit, int64(1+r.IntN(100_000))
				st.EstimateMicros += st.AllowanceMicros
			}
			if r.IntN(2) == 0 {
				st.Estimate = events.Units{TokensIn: int64(r.IntN(5000)), TokensOut: int64(r.IntN(5000))}
			}
			if r.IntN(4) == 0 { // a project funded by its organization's balance
				st.FundingAccountID = "org-" + acct
			}
			add(now, st)
		case k < 55:
			f := events.RequestFinished{RequestID: req, AccountID: acct, Endpoint: "codex.responses", Model: opt("m1"),
				Status: []string{events.StatusSucceeded, events.StatusFailed, events.StatusCancelled}[r.IntN(3)],
				Usage:  events.Units{VideoSeconds: int64(r.IntN(20)), Resolution: opt("720p")}, CostMicros: int64(r.IntN(500_000)),
				DurationMs: int64(r.IntN(60_000)), PriceBookVersion: "v1", KeyID: opt("k1"), ClientAddr: opt("::1")}
			if r.IntN(3) == 0 { // the split of the cost
				f.AllowanceMicros = int64(r.IntN(int(f.CostMicros) + 1))
				f.CreditsMicros = int64(r.IntN(int(f.CostMicros-f.AllowanceMicros) + 1))
				f.OverageMicros = f.CostMicros - f.AllowanceMicros - f.CreditsMicros
			}
			if r.IntN(4) == 0 {
				f.FundingAccountID = "org-" + acct
			}
			add(now, f)
		case k < 65:
			add(now, events.RequestRejected{RequestID: req, AccountID: acct, Endpoint: "sora.video", Model: opt("sora-2"), Tier: "free",
				Priority: events.PriorityBatch, Reason: "rate_limited", RetryAfterMs: int64(r.IntN(5000)), EstimateMicros: int64(r.IntN(9000)),
				PriceBookVersion: "v1", KeyID: opt("k2"), ClientAddr: opt("203.0.113.7")})
		case k < 85:
			add(now, events.LedgerEntry{EntryID: events.DerivedID(req, "a"), TransactionID: events.DerivedID(req, "t"), AccountID: acct,
				LedgerAccount: []string{events.LedgerAvailable, events.LedgerHeld, events.LedgerRevenue}[r.IntN(3)],
				AmountMicros:  int64(r.IntN(400_000) - 200_000), Kind: "charge", CauseEventID: events.DerivedID(req, "c"),
				RequestID: opt(req), GrantID: opt("g1"), EffectiveAt: now})
		case k < 88:
			add(now, events.RequestExpired{RequestID: req, AccountID: acct, Endpoint: "codex.responses", Funding: events.FundingCredits,
				HoldMicros: 10, ReleasedMicros: 10, StartedEventID: events.DerivedID(req, "s"), ExpiredAt: now})
		case k < 91:
			g := events.CreditsGranted{GrantID: req, AccountID: acct, AmountMicros: int64(1 + r.IntN(5_000_000)), Source: events.GrantPurchase}
			if r.IntN(2) == 0 {
				e := now.Add(time.Hour)
				g.ExpiresAt = &e
			}
			if r.IntN(2) == 0 {
				g.PaymentRef = "pi_" + req
			}
			add(now, g)
		case k < 93:
			add(now, events.CreditsAdjusted{AdjustmentID: req, AccountID: acct, AmountMicros: int64(r.IntN(200_000) - 100_000 + 1), Reason: "gen"})
		case k < 95:
			add(now, events.AccountUpdated{AccountID: acct, Tier: "pro", Priority: events.PriorityBatch})
		case k < 96:
			add(now, events.AbuseFlagged{FlagID: req, AccountID: acct, Rule: "r", Score: 1, Action: events.ActionThrottle,
				WindowStart: now.Add(-time.Minute), WindowEnd: now})
		case len(out) > 0:
			out = append(out, out[len(out)-1-r.IntN(min(5, len(out)))]) // a producer retry
		}
	}
	return out[:n]
}

// decodeCorpus is encoded events of every type (randomLog and samples), hot events with
// every optional field set, and variants the fast path must leave to Decode.
func decodeCorpus(t testing.TB) [][]byte {
	var out [][]byte
	encode := func(ev events.Event) []byte {
		b, err := ev.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, ev := range randomLog(7, 3000, 50, time.Date(2026, 11, 2, 10, 0, 0, 123456789, time.UTC)) {
		out = append(out, encode(ev))
	}
	at := time.Date(2026, 11, 2, 10, 0, 0, 5, time.UTC)
	for _, d := range samples() {
		ev, err := events.New("urn:test", at, d)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, encode(ev))
	}
	full := []events.Data{
		events.RequestStarted{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses", Model: "m1", Tier: "pro",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, Estimate: events.Units{VideoSeconds: 3, Resolution: "1080p", TokensIn: 5, TokensOut: 6, ComputeMs: 7},
			EstimateMicros: 10_000, HoldMicros: 10_000, AllowanceMicros: 0, HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: "v", KeyID: "k1", ClientAddr: "10.0.0.1"},
		events.RequestFinished{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses", Model: "m1", Status: events.StatusSucceeded,
			Usage: events.Units{TokensIn: 1 << 40, TokensOut: 2}, CostMicros: 9_999, DurationMs: 1234, PriceBookVersion: "v", KeyID: "k1", ClientAddr: "10.0.0.1"},
		events.RequestFinished{RequestID: "r<2>", AccountID: "ä", Endpoint: "codex.responses", Status: events.StatusSucceeded, PriceBookVersion: "v"},
		events.RequestRejected{RequestID: "r1", AccountID: "acct-1", Endpoint: "sora.video", Model: "sora-2", Tier: "free",
			Priority: events.PriorityBatch, Reason: "rate_limited", RetryAfterMs: 1500, EstimateMicros: 9999, PriceBookVersion: "v",
			KeyID: "k1", ClientAddr: "::1"},
		events.LedgerEntry{EntryID: events.DerivedID("c1", "a"), TransactionID: events.DerivedID("c1", "t"), AccountID: "acct-1",
			LedgerAccount: events.LedgerHeld, AmountMicros: 9999, Kind: "charge", CauseEventID: events.DerivedID("c1", "c"),
			RequestID: "r1", GrantID: "g1", EffectiveAt: at.Add(time.Second)},
		events.LedgerEntry{EntryID: events.DerivedID("c3", "a"), TransactionID: events.DerivedID("c3", "t"), AccountID: "org",
			LedgerAccount: events.LedgerAvailable, AmountMicros: -5, Kind: "hold", CauseEventID: events.DerivedID("c3", "c"),
			RequestID: "r1", ProjectID: "p1", EffectiveAt: at},
		events.LedgerEntry{EntryID: events.DerivedID("c2", "a"), TransactionID: events.DerivedID("c2", "t"), AccountID: "acct-2",
			LedgerAccount: events.LedgerRevenue, AmountMicros: -1, Kind: "charge", CauseEventID: events.DerivedID("c2", "c"), EffectiveAt: at},
	}
	for _, d := range full {
		ev, err := events.New("urn:test", at, d)
		if err != nil {
			t.Fatal(err)
		}
		s := string(encode(ev))
		out = append(out, []byte(s))
		for _, v := range []string{
			strings.Replace(s, `"specversion"`, ` "specversion" `, 1),
			"\n\t" + s + " \r\n",
			strings.Replace(s, `"request_id":"r1"`, `"request_id":"r\u0031"`, 1),
			strings.Replace(s, `"request_id":"r1"`, `"request_id":"r1","request_id":"r2"`, 1),
			strings.Replace(s, `"request_id":"r1",`, ``, 1),
			strings.Replace(s, `"request_id"`, `"Request_id"`, 1),
			strings.Replace(s, `"request_id":"r1"`, `"request_id":"r1","extra":1`, 1),
			strings.Replace(s, `"ledger_account":"customer.held"`, `"ledger_account":"cash"`, 1),
			strings.Replace(s, `"effective_at":"`, `"effective_at":"x`, 1),
			strings.Replace(s, `"retry_after_ms":1500`, `"retry_after_ms":1500,"retry_after_ms":1`, 1),
			strings.Replace(s, `"cost_micros":9999`, `"cost_micros":9999.0`, 1),
			strings.Replace(s, `"cost_micros":9999`, `"cost_micros":9.999e3`, 1),
			strings.Replace(s, `"cost_micros":9999`, `"cost_micros":-0`, 1),
			strings.Replace(s, `"cost_micros":9999`, `"cost_micros":-1`, 1),
			strings.Replace(s, `"cost_micros":9999`, `"cost_micros":09999`, 1),
			strings.Replace(s, `"cost_micros":9999`, `"cost_micros":99999999999999999999`, 1),
			strings.Replace(s, `"cost_micros":9999`, `"cost_micros":null`, 1),
			strings.Replace(s, `"cost_micros":9999`, `"cost_micros":"9999"`, 1),
			strings.Replace(s, `"duration_ms":1234`, `"duration_ms":999999999999999999`, 1),
			strings.Replace(s, `Z"`, `+01:00"`, 1),
			strings.Replace(s, `"type":"tally.request.`, `"type":"tally.request.x`, 1),
			strings.Replace(s, `"specversion":"1.0"`, `"specversion":"1.1"`, 1),
			s + "{}",
			s[:len(s)-1],
			strings.Replace(s, `"usage":{`, `"usage":{"tokens_in":1,`, 1),
		} {
			out = append(out, []byte(v))
		}
		for _, key := range []string{"cost_micros", "amount_micros", "estimate_micros"} {
			old := `"` + key + `":9999`
			for _, v := range []string{"9999.0", "9.999e3", "-0", "-1", "09999", "99999999999999999999", "null", `"9999"`, "1000000000000000001"} {
				if strings.Contains(s, old) {
					out = append(out, []byte(strings.Replace(s, old, `"`+key+`":`+v, 1)))
				}
			}
		}
	}
	return out
}

// checkSameDecode fails unless the fast path either declines b or gives exactly what
// events.Decode gives; and Decoder.Decode always gives what events.Decode gives.
func checkSameDecode(t testing.TB, d *events.Decoder, b []byte) (fast bool) {
	want, werr := events.Decode(b)
	got, ok := d.FastPath(bytes.Clone(b))
	if ok && (werr != nil || !reflect.DeepEqual(got, want)) {
		t.Fatalf("fast path accepted %s\nfast  %#v\nDecode %#v (err %v)", b, got, want, werr)
	}
	got, gerr := d.Decode(b)
	if (gerr == nil) != (werr == nil) || (werr != nil && gerr.Error() != werr.Error()) || !reflect.DeepEqual(got, want) {
		t.Fatalf("Decode of %s: got %v %v, want %v %v", b, got, gerr, want, werr)
	}
	return ok
}

// fastTypes are the types the Decoder parses by hand.
var fastTypes = map[string]bool{events.TypeRequestStarted: true, events.TypeRequestFinished: true,
	events.TypeRequestRejected: true, events.TypeLedgerEntry: true}

// TestDecoderMatchesDecode: on every corpus message the Decoder gives what events.Decode
// gives, and the fast path takes the hot events in the producers' shape.
func TestDecoderMatchesDecode(t *testing.T) {
	var d events.Decoder
	hot, fast := map[string]int{}, map[string]int{}
	for _, b := range decodeCorpus(t) {
		ok := checkSameDecode(t, &d, b)
		if ev, err := events.Decode(b); err == nil && fastTypes[ev.Type] && isASCII(b) {
			hot[ev.Type]++
			if ok {
				fast[ev.Type]++
			}
		}
	}
	for typ := range fastTypes {
		if hot[typ] < 300 || fast[typ] < hot[typ]*9/10 {
			t.Errorf("the fast path took %d of %d plain %s events", fast[typ], hot[typ], typ)
		}
	}
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 || c == '\\' {
			return false
		}
	}
	return true
}

// FuzzDecoder: whatever the bytes, the fast path never accepts what events.Decode refuses,
// and never decodes differently.
func FuzzDecoder(f *testing.F) {
	c := decodeCorpus(f)
	for _, b := range c[2960:] {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var d events.Decoder
		checkSameDecode(t, &d, b)
	})
}

func TestDecoderAllocs(t *testing.T) {
	e, _ := events.New("bench", time.Now(), events.RequestFinished{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses",
		Status: events.StatusSucceeded, CostMicros: 7_000, PriceBookVersion: "v"})
	v, _ := e.Encode()
	var d events.Decoder
	n := testing.AllocsPerRun(100, func() {
		if _, err := d.Decode(v); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%.0f allocations per request.finished", n)
}
