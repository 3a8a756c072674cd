package bounds_test

import (
	"errors"
	"math"
	"testing"

	"github.com/tallyhq/tally/shared/bounds"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		v, lo, hi int64
		want      string
	}{
		{5, 1, 10, ""},
		{1, 1, 10, ""},
		{10, 1, 10, ""},
		{0, 1, 10, "X_MS: 0 out of range [1, 10]"},
		{11, 1, 10, "X_MS: 11 out of range [1, 10]"},
		{-1 << 40, 0, 1 << 40, "X_MS: -1099511627776 out of range [0, 1099511627776]"},
	} {
		err := bounds.Check("X_MS", tc.v, tc.lo, tc.hi)
		if got := errText(err); got != tc.want {
			t.Errorf("Check(%d, [%d, %d]) = %q, want %q", tc.v, tc.lo, tc.hi, got, tc.want)
		}
	}
	for _, tc := range []struct {
		v    float64
		want string
	}{
		{0.5, "F: 0.5 out of range [1, 2.5]"},
		{2.5, ""},
		{math.NaN(), "F: NaN out of range [1, 2.5]"},
		{math.Inf(1), "F: +Inf out of range [1, 2.5]"},
	} {
		if got := errText(bounds.Check("F", tc.v, 1, 2.5)); got != tc.want {
			t.Errorf("Check(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

func TestInto(t *testing.T) {
	var errs []error
	in := bounds.Into[int64](&errs, "P_")
	in("A", 1, 0, 2)
	in("B", 3, 0, 2)
	in("C", -1, 0, 2)
	want := "P_B: 3 out of range [0, 2]\nP_C: -1 out of range [0, 2]"
	if got := errText(errors.Join(errs...)); got != want {
		t.Fatalf("joined errors = %q, want %q", got, want)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
