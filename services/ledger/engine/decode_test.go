package engine

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/internal/gen"
	"github.com/tallyhq/tally/shared/events"
)

// decodeCorpus is encoded events of every type (gen's random log), hot events with every
// optional field set, and variants the fast path must leave to events.Decode.
func decodeCorpus(t testing.TB) [][]byte {
	var out [][]byte
	for _, ev := range gen.RandomLog(7, 3000, 50, time.Date(2026, 11, 2, 10, 0, 0, 123456789, time.UTC), 500) {
		b, err := ev.Encode()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	at := time.Date(2026, 11, 2, 10, 0, 0, 5, time.UTC)
	full := []events.Data{
		events.RequestStarted{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses", Model: "m1", Tier: "pro",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, Estimate: events.Units{VideoSeconds: 3, Resolution: "1080p", TokensIn: 5, TokensOut: 6, ComputeMs: 7},
			EstimateMicros: 10_000, HoldMicros: 10_000, AllowanceMicros: 0, HoldExpiresAt: at.Add(time.Minute), PriceBookVersion: "v", KeyID: "k1", ClientAddr: "10.0.0.1"},
		events.RequestFinished{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses", Model: "m1", Status: events.StatusSucceeded,
			Usage: events.Units{TokensIn: 1 << 40, TokensOut: 2}, CostMicros: 9_999, DurationMs: 1234, PriceBookVersion: "v", KeyID: "k1", ClientAddr: "10.0.0.1"},
		events.RequestFinished{RequestID: "r<2>", AccountID: "ä", Endpoint: "codex.responses", Status: events.StatusSucceeded, PriceBookVersion: "v"},
	}
	for _, d := range full {
		ev, err := events.New("urn:test", at, d)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := ev.Encode()
		out = append(out, b)
		s := string(b)
		for _, v := range []string{
			strings.Replace(s, `"specversion"`, ` "specversion" `, 1),
			"\n\t" + s + " \r\n",
			strings.Replace(s, `"request_id":"r1"`, `"request_id":"r\u0031"`, 1),
			strings.Replace(s, `"request_id":"r1"`, `"request_id":"r1","request_id":"r2"`, 1),
			strings.Replace(s, `"request_id":"r1",`, ``, 1),
			strings.Replace(s, `"request_id"`, `"Request_id"`, 1),
			strings.Replace(s, `"request_id":"r1"`, `"request_id":"r1","extra":1`, 1),
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
	}
	return out
}

// checkSameDecode fails unless the fast path either declines b or gives exactly what
// events.Decode gives; and decoder.Decode always gives what events.Decode gives.
func checkSameDecode(t testing.TB, d *decoder, b []byte) (fast bool) {
	want, werr := events.Decode(b)
	got, ok := d.fast(bytes.Clone(b))
	if ok && (werr != nil || !reflect.DeepEqual(got, want)) {
		t.Fatalf("fast path accepted %s\nfast  %#v\nDecode %#v (err %v)", b, got, want, werr)
	}
	got, gerr := d.Decode(b)
	if (gerr == nil) != (werr == nil) || (werr != nil && gerr.Error() != werr.Error()) || !reflect.DeepEqual(got, want) {
		t.Fatalf("Decode of %s: got %v %v, want %v %v", b, got, gerr, want, werr)
	}
	return ok
}

// TestFastDecodeMatchesDecode: on every corpus message the decoder gives what events.Decode
// gives, and the fast path takes the hot events in the producers' shape.
func TestFastDecodeMatchesDecode(t *testing.T) {
	var d decoder
	hot, fast := 0, 0
	for _, b := range decodeCorpus(t) {
		ok := checkSameDecode(t, &d, b)
		if ev, err := events.Decode(b); err == nil && (ev.Type == events.TypeRequestStarted || ev.Type == events.TypeRequestFinished) && isASCII(b) {
			hot++
			if ok {
				fast++
			}
		}
	}
	if hot < 1000 || fast < hot*9/10 {
		t.Fatalf("the fast path took %d of %d plain hot events", fast, hot)
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

// FuzzFastDecode: whatever the bytes, the fast path never accepts what events.Decode
// refuses, and never decodes differently.
func FuzzFastDecode(f *testing.F) {
	for _, b := range decodeCorpus(f)[2990:] {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var d decoder
		checkSameDecode(t, &d, b)
	})
}

func TestFastDecodeAllocs(t *testing.T) {
	at := time.Now()
	e, _ := events.New("bench", at, events.RequestFinished{RequestID: "r1", AccountID: "acct-1", Endpoint: "codex.responses",
		Status: events.StatusSucceeded, CostMicros: 7_000, PriceBookVersion: "v"})
	v, _ := e.Encode()
	var d decoder
	n := testing.AllocsPerRun(100, func() {
		if _, err := d.Decode(v); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%.0f allocations per request.finished", n)
}
