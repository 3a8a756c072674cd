package decide

import (
	"errors"
	"fmt"
)

// AdaptiveConfig configures the local adaptive concurrency limit of each endpoint: an AIMD
// limit driven by the durations and failures reported at finish. Every WindowSamples
// finishes, if the window's mean duration exceeded TolerancePermille of the baseline (the
// lowest window mean seen, drifting up by DriftPermille per window so that it can follow a
// slower model) or FailurePermille of the window failed, the limit is multiplied by
// BackoffPermille; otherwise it grows by IncreasePermille of the endpoint's capacity. It never
// leaves [MinInflight, capacity_inflight].
type AdaptiveConfig struct {
	Enabled           bool
	WindowSamples     int64
	TolerancePermille int64
	FailurePermille   int64
	BackoffPermille   int64
	IncreasePermille  int64
	DriftPermille     int64
	MinInflight       int64
}

// DefaultAdaptiveConfig: windows of 50 finishes, back off ×0.8 when the mean duration doubles
// or 10% fail, grow by 5% of capacity per good window, baseline drifts up 1% per window.
var DefaultAdaptiveConfig = AdaptiveConfig{Enabled: true, WindowSamples: 50, TolerancePermille: 2000,
	FailurePermille: 100, BackoffPermille: 800, IncreasePermille: 50, DriftPermille: 10, MinInflight: 1}

// Validate reports every out-of-range field.
func (c AdaptiveConfig) Validate() error {
	var errs []error
	rng := func(name string, v, lo, hi int64) {
		if v < lo || v > hi {
			errs = append(errs, fmt.Errorf("%s: %d out of range [%d, %d]", name, v, lo, hi))
		}
	}
	rng("WindowSamples", c.WindowSamples, 1, 1_000_000)
	rng("TolerancePermille", c.TolerancePermille, 1001, 100_000)
	rng("FailurePermille", c.FailurePermille, 1, 1000)
	rng("BackoffPermille", c.BackoffPermille, 1, 999)
	rng("IncreasePermille", c.IncreasePermille, 1, 1000)
	rng("DriftPermille", c.DriftPermille, 0, 1000)
	rng("MinInflight", c.MinInflight, 1, 1_000_000)
	return errors.Join(errs...)
}

// Adaptive is one endpoint's adaptive concurrency limit.
type Adaptive struct {
	cfg        AdaptiveConfig
	capacity   int64
	limit      int64
	baselineMs int64 // lowest window mean, 0 until the first window
	sumMs      int64
	n          int64
	failed     int64
}

func (a *Adaptive) init(cfg AdaptiveConfig, capacity int64) {
	a.cfg, a.capacity, a.limit = cfg, capacity, capacity
}

// Limit is the current in-flight limit.
func (a *Adaptive) Limit() int64 {
	if !a.cfg.Enabled {
		return a.capacity
	}
	return a.limit
}

// Observe records one finished request.
func (a *Adaptive) Observe(durationMs int64, failed bool) {
	if !a.cfg.Enabled {
		return
	}
	if durationMs < 0 {
		durationMs = 0
	}
	a.sumMs += durationMs
	a.n++
	if failed {
		a.failed++
	}
	if a.n < a.cfg.WindowSamples {
		return
	}
	mean := a.sumMs / a.n
	overloaded := a.failed*1000 >= a.cfg.FailurePermille*a.n
	if a.baselineMs == 0 || mean < a.baselineMs {
		a.baselineMs = max(mean, 1)
	} else {
		if mean*1000 > a.baselineMs*a.cfg.TolerancePermille {
			overloaded = true
		}
		a.baselineMs += max(a.baselineMs*a.cfg.DriftPermille/1000, 1)
	}
	if overloaded {
		a.limit = min(max(a.limit*a.cfg.BackoffPermille/1000, a.cfg.MinInflight), a.capacity)
	} else {
		a.limit = min(a.limit+max(a.capacity*a.cfg.IncreasePermille/1000, 1), a.capacity)
	}
	a.sumMs, a.n, a.failed = 0, 0, 0
}
