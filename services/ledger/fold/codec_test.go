package fold

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestCodecRoundTrip(t *testing.T) {
	evs := randomLog(t, 9, 20_000, 40)
	s, _ := run(t, evs)
	n := 0
	s.Accounts(func(a *Account) {
		b := a.AppendBinary(nil)
		got, err := DecodeAccount(b)
		if err != nil {
			t.Fatalf("%s: %v", a.ID, err)
		}
		want, _ := json.Marshal(a)
		have, _ := json.Marshal(got)
		if !bytes.Equal(want, have) {
			t.Fatalf("%s: round trip differs:\n%s\n%s", a.ID, want, have)
		}
		if len(b) >= len(want) {
			t.Errorf("%s: binary %d bytes, JSON %d", a.ID, len(b), len(want))
		}
		// Every truncation is an error, never a panic or a silent partial account.
		for i := 0; i < len(b); i++ {
			if _, err := DecodeAccount(b[:i]); err == nil {
				t.Fatalf("%s: truncated at %d decoded", a.ID, i)
			}
		}
		n++
	})
	if n == 0 {
		t.Fatal("no accounts")
	}
}

func FuzzDecodeAccount(f *testing.F) {
	a := &Account{ID: "x", Holds: []Hold{{RequestID: "r"}}, Grants: []Grant{{ID: "g"}}}
	f.Add(a.AppendBinary(nil))
	// With a dedupe memory (times in order, a floor), large enough to be indexed.
	a.Dedupe.FloorNs = 12345
	for i := 0; i < 70; i++ {
		a.Dedupe.Append(uint64(i)*0x9e3779b97f4a7c15, int64(1_000_000+i*i))
	}
	f.Add(a.AppendBinary(nil))
	// A version-1 record: the account fields, then three rings (8 events, 16 requests, 8 ids).
	v1 := []byte{1, 1, 'x', 0, 0, 0}
	for i := 0; i < 19+8; i++ {
		v1 = append(v1, 0)
	}
	v1 = append(v1, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0, 1, 7, 7, 7, 7, 7, 7, 7, 7, 0, 0, 0)
	if _, err := DecodeAccount(v1); err != nil {
		f.Fatalf("v1 seed: %v", err)
	}
	f.Add(v1)
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeAccount(b)
		if err != nil {
			return
		}
		// Varints have non-canonical forms, so compare the canonical re-encoding.
		canon := a.AppendBinary(nil)
		again, err := DecodeAccount(canon)
		if err != nil || !bytes.Equal(again.AppendBinary(nil), canon) {
			t.Fatalf("decoded record does not round-trip: %v", err)
		}
	})
}
