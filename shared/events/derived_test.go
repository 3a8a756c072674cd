package events

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
)

// TestAppendDerivedIDEqualsDerivedID pins AppendDerivedID to the bytes of DerivedID (and of
// uuid.NewSHA1, which DerivedID has always used): published ids must never change.
func TestAppendDerivedIDEqualsDerivedID(t *testing.T) {
	causes := []string{"", "0190f5a2-7c3e-7b1d-9f00-0123456789ab", "0190F5A2-7C3E-7B1D-9F00-0123456789AB",
		"balance/3/12345", "limits/0/99", strings.Repeat("x", derivedStackMax), strings.Repeat("y", derivedStackMax+50), "é/ü"}
	legs := []string{"", "tx", "expired", "breakage", LedgerAvailable, LedgerHeld, LedgerRevenue, "acct-42", strings.Repeat("z", 300)}
	for _, c := range causes {
		for _, l := range legs {
			want := uuid.NewSHA1(derivedNamespace, []byte(c+"/"+l)).String()
			if got := DerivedID(c, l); got != want {
				t.Fatalf("DerivedID(%q, %q) = %s, want %s", c, l, got, want)
			}
			prefix := []byte("prefix:")
			got := AppendDerivedID(prefix, c, l)
			if string(got) != "prefix:"+want {
				t.Fatalf("AppendDerivedID(%q, %q) = %s, want prefix:%s", c, l, got, want)
			}
		}
	}
	for i := range 10_000 {
		c, l := uuid.NewString(), fmt.Sprint("leg-", i)
		if got, want := string(AppendDerivedID(nil, c, l)), uuid.NewSHA1(derivedNamespace, []byte(c+"/"+l)).String(); got != want {
			t.Fatalf("AppendDerivedID(%q, %q) = %s, want %s", c, l, got, want)
		}
	}
}

func TestAppendDerivedIDAllocs(t *testing.T) {
	dst := make([]byte, 0, 64)
	cause := "0190f5a2-7c3e-7b1d-9f00-0123456789ab"
	if n := testing.AllocsPerRun(100, func() { dst = AppendDerivedID(dst[:0], cause, LedgerAvailable) }); n != 0 {
		t.Fatalf("AppendDerivedID allocates %v times per call", n)
	}
}

func BenchmarkDerivedID(b *testing.B) {
	cause := "0190f5a2-7c3e-7b1d-9f00-0123456789ab"
	b.Run("DerivedID", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = DerivedID(cause, LedgerAvailable)
		}
	})
	b.Run("AppendDerivedID", func(b *testing.B) {
		b.ReportAllocs()
		dst := make([]byte, 0, 64)
		for b.Loop() {
			dst = AppendDerivedID(dst[:0], cause, LedgerAvailable)
		}
	})
}
