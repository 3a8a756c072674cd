// Package backoff holds the one exponential backoff and the one context-aware sleep that the
// services' retry loops share.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is an exponential backoff: the wait after the first failure is Min, each further
// failure doubles it, up to Max. JitterPermille (0 to 1000; 0 is none) takes a random share of
// up to that many permille off each wait, never below Min, so that clients that failed
// together do not all retry together.
type Policy struct {
	Min, Max       time.Duration
	JitterPermille int64
}

// Wait is the wait after the n-th failure in a row (n >= 1; below 1 counts as 1): Min·2^(n-1),
// at most Max, less the jitter. It is always within [Min, Max] when 0 < Min <= Max.
func (p Policy) Wait(n int64) time.Duration {
	w := p.Min
	for i := int64(1); i < n && w > 0 && w < p.Max; i++ {
		w *= 2
	}
	w = min(w, p.Max)
	if j := min(max(p.JitterPermille, 0), 1000); j > 0 && w > p.Min {
		w = max(w-time.Duration(rand.Int64N(int64(w)/1000*j+1)), p.Min)
	}
	return w
}

// Sleep waits d (nothing when d <= 0) and reports whether ctx is still alive: false as soon
// as ctx ends.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
