package backoff_test

import (
	"context"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/backoff"
)

func TestWaitDoublesUpToMax(t *testing.T) {
	p := backoff.Policy{Min: 10 * time.Millisecond, Max: 500 * time.Millisecond}
	want := []time.Duration{10, 10, 10, 20, 40, 80, 160, 320, 500, 500}
	for i, w := range want {
		n := int64(i) - 1 // -1, 0 and 1 all give Min
		if got := p.Wait(n); got != w*time.Millisecond {
			t.Errorf("Wait(%d) = %s, want %s", n, got, w*time.Millisecond)
		}
	}
	if got := p.Wait(1 << 62); got != p.Max {
		t.Errorf("Wait(2^62) = %s, want Max %s", got, p.Max)
	}
}

func TestWaitJitterStaysInBounds(t *testing.T) {
	p := backoff.Policy{Min: time.Millisecond, Max: time.Second, JitterPermille: 1000}
	seen := map[time.Duration]bool{}
	for n := int64(1); n < 2000; n++ {
		w := p.Wait(n%15 + 1)
		if w < p.Min || w > p.Max {
			t.Fatalf("Wait(%d) = %s, outside [%s, %s]", n%15+1, w, p.Min, p.Max)
		}
		seen[w] = true
	}
	if len(seen) < 100 {
		t.Fatalf("jitter gave only %d distinct waits in 2000", len(seen))
	}
	if w := p.Wait(1); w != p.Min {
		t.Fatalf("Wait(1) with jitter = %s, want Min %s (jitter never goes below Min)", w, p.Min)
	}
}

func TestSleep(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	if !backoff.Sleep(ctx, 0) || !backoff.Sleep(ctx, time.Millisecond) {
		t.Fatal("Sleep on a live context reported it ended")
	}
	cancel()
	if backoff.Sleep(ctx, 0) || backoff.Sleep(ctx, time.Hour) {
		t.Fatal("Sleep on an ended context reported it alive")
	}
}
