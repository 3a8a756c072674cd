package decide

import (
	"errors"

	"github.com/tallyhq/tally/shared/bounds"
)

// AdaptiveConfig configures the local adaptive concurrency limit of each endpoint: an AIMD
// limit driven by the latency this admitter measures itself (admission to finish) and the
// failures reported at finish. Every WindowSamples samples, if the window's mean latency
// exceeded TolerancePermille of the baseline (the lowest window mean, drifting up by
// DriftPermille per window) or FailurePermille of the window failed, the limit is multiplied
// by BackoffPermille; otherwise it grows by IncreasePermille of the endpoint's capacity.
//
// It cannot lock up: it never falls below the floor (FloorPermille of capacity_inflight, at
// least InflightMin); RebaseWindows slow windows in a row make their lowest mean the new
// baseline (backing off did not bring the latency back: the work got slower, e.g. longer
// videos, rather than the endpoint overloaded); and each RecoveryMs without any sample
// grows it by one increase step (no admissions means no finishes, so no window would ever
// close again). It never leaves [floor, capacity_inflight].
type AdaptiveConfig struct {
	Enabled           bool
	WindowSamples     int64
	TolerancePermille int64
	FailurePermille   int64
	BackoffPermille   int64
	IncreasePermille  int64
	DriftPermille     int64
	InflightMin       int64
	FloorPermille     int64
	RebaseWindows     int64
	RecoveryMs        int64
}

// DefaultAdaptiveConfig: windows of 50 finishes, back off ×0.8 when the mean latency doubles
// or 10% fail, grow by 5% of capacity per good window, baseline drifts up 1% per window;
// floor 10% of capacity; 3 slow windows in a row re-learn the baseline; +5% of capacity per
// 5 s without a finish.
var DefaultAdaptiveConfig = AdaptiveConfig{Enabled: true, WindowSamples: 50, TolerancePermille: 2000,
	FailurePermille: 100, BackoffPermille: 800, IncreasePermille: 50, DriftPermille: 10, InflightMin: 1,
	FloorPermille: 100, RebaseWindows: 3, RecoveryMs: 5000}

// sampleMsMax bounds one latency sample (7 days), so that window sums cannot overflow.
const sampleMsMax = 7 * 24 * 3600 * 1000

// Validate reports every out-of-range field.
func (c AdaptiveConfig) Validate() error {
	var errs []error
	rng := bounds.Into[int64](&errs, "")
	rng("WindowSamples", c.WindowSamples, 1, 1_000_000)
	rng("TolerancePermille", c.TolerancePermille, 1001, 100_000)
	rng("FailurePermille", c.FailurePermille, 1, 1000)
	rng("BackoffPermille", c.BackoffPermille, 1, 999)
	rng("IncreasePermille", c.IncreasePermille, 1, 1000)
	rng("DriftPermille", c.DriftPermille, 0, 1000)
	rng("InflightMin", c.InflightMin, 1, 1_000_000)
	rng("FloorPermille", c.FloorPermille, 1, 1000)
	rng("RebaseWindows", c.RebaseWindows, 1, 1000)
	rng("RecoveryMs", c.RecoveryMs, 1, 3_600_000)
	return errors.Join(errs...)
}

// Outcome is what a finish tells the adaptive limit.
type Outcome uint8

const (
	// OutcomeNone is no sample: a cancelled request (its latency is the client's patience,
	// not the endpoint's) or an admission revoked by the admitter.
	OutcomeNone Outcome = iota
	OutcomeSucceeded
	OutcomeFailed
)

// FinishOutcome maps a finish status to its Outcome: succeeded and failed are samples,
// anything else (cancelled) is not.
func FinishOutcome(status string) Outcome {
	switch status {
	case "succeeded":
		return OutcomeSucceeded
	case "failed":
		return OutcomeFailed
	}
	return OutcomeNone
}

// Adaptive is one endpoint's adaptive concurrency limit.
type Adaptive struct {
	cfg        AdaptiveConfig
	capacity   int64
	floor      int64
	step       int64 // additive increase
	limit      int64
	baselineMs int64 // lowest window mean, 0 until the first window
	sumMs      int64
	n          int64
	failed     int64
	slow       int64 // latency-overloaded windows in a row
	slowMinMs  int64 // the lowest mean among them
	lastMs     int64 // time of the last sample or recovery step
}

func (a *Adaptive) init(cfg AdaptiveConfig, capacity int64) {
	a.cfg, a.capacity, a.limit = cfg, capacity, capacity
	a.floor = min(max(capacity*cfg.FloorPermille/1000, cfg.InflightMin), capacity)
	a.step = max(capacity*cfg.IncreasePermille/1000, 1)
}

// Limit is the in-flight limit at nowMs. When it is below capacity and no sample came for
// RecoveryMs, it first grows by one increase step per RecoveryMs elapsed.
func (a *Adaptive) Limit(nowMs int64) int64 {
	if !a.cfg.Enabled {
		return a.capacity
	}
	if a.limit < a.capacity && nowMs-a.lastMs >= a.cfg.RecoveryMs {
		a.recover(nowMs)
	}
	return a.limit
}

// recover is kept out of Limit so that the common path (nothing due) stays inlined.
func (a *Adaptive) recover(nowMs int64) {
	steps := (nowMs - a.lastMs) / a.cfg.RecoveryMs
	if need := (a.capacity - a.limit + a.step - 1) / a.step; steps >= need {
		a.limit = a.capacity
	} else {
		a.limit += steps * a.step
	}
	a.lastMs += steps * a.cfg.RecoveryMs
}

// Observe records one finished request: admitted at startedMs, finished at nowMs.
func (a *Adaptive) Observe(startedMs, nowMs int64, failed bool) {
	if !a.cfg.Enabled {
		return
	}
	a.lastMs = max(a.lastMs, nowMs)
	a.sumMs += min(max(nowMs-startedMs, 0), sampleMsMax)
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
		a.slow = 0
	} else {
		slow := mean*1000 > a.baselineMs*a.cfg.TolerancePermille
		a.baselineMs += max(a.baselineMs*a.cfg.DriftPermille/1000, 1)
		if slow {
			a.slowWindow(mean, &overloaded)
		} else {
			a.slow = 0
		}
	}
	if overloaded {
		a.limit = max(a.limit*a.cfg.BackoffPermille/1000, a.floor)
	} else {
		a.limit = min(a.limit+a.step, a.capacity)
	}
	a.sumMs, a.n, a.failed = 0, 0, 0
}

// slowWindow counts a window whose mean is beyond tolerance: overload, unless it is the
// RebaseWindows-th in a row, whose lowest mean then becomes the baseline.
func (a *Adaptive) slowWindow(mean int64, overloaded *bool) {
	if a.slow == 0 || mean < a.slowMinMs {
		a.slowMinMs = mean
	}
	a.slow++
	if a.slow < a.cfg.RebaseWindows {
		*overloaded = true
		return
	}
	a.baselineMs, a.slow = max(a.slowMinMs, 1), 0
}
