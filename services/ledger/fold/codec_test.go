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
