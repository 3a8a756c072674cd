package fold

import (
	"testing"

	"github.com/tallyhq/tally/shared/pricebook"
)

// TestOveragePolicy: a cost above the hold is charged from the available balance under the
// price book's "available" policy, and recorded entirely as overage under "hold_only".
func TestOveragePolicy(t *testing.T) {
	for _, tc := range []struct {
		policy             string
		available, overage int64
		charged            int64
	}{
		{pricebook.OverageFromAvailable, 2, 0, 8},
		{pricebook.OverageHoldOnly, 5, 3, 5},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			book := pricebook.Default()
			book.OveragePolicy = tc.policy
			l := &logb{t: t}
			l.add(t0, grant("a", "g", 10, 100, nil))
			l.add(t0.Add(1), start("a", "r", 5, t0))
			l.add(t0.Add(2), finish("a", "r", 8))
			s := New(DefaultConfig(book), 0)
			var out Output
			for i, e := range l.evs {
				s.Apply(Input{Offset: int64(i), Event: e}, &out)
			}
			mustCheck(t, s, &out)
			a := s.Account("a")
			if a.AvailableMicros != tc.available || a.OverageMicros != tc.overage || a.HeldMicros != 0 || a.ChargedMicros != tc.charged {
				t.Fatalf("available %d overage %d held %d charged %d; want %d %d 0 %d",
					a.AvailableMicros, a.OverageMicros, a.HeldMicros, a.ChargedMicros, tc.available, tc.overage, tc.charged)
			}
		})
	}
}
