package detect

import (
	"errors"
	"fmt"
	"time"

	"github.com/tallyhq/tally/shared/bounds"
)

// Config holds the detector's schedule and every rule's threshold. Each field is a setting.
type Config struct {
	// IntervalMs is how often the rules run (SINK_DETECT_INTERVAL_MS, default 60000; 0 turns
	// the detector off; else 1000..86400000).
	IntervalMs int `env:"SINK_DETECT_INTERVAL_MS" envDefault:"60000"`
	// WindowMinutes is the evaluated window, aligned to the Unix epoch: each run looks at the
	// last complete window (SINK_DETECT_WINDOW_MINUTES, default 5, 1..1440). Key sharing and
	// expiry abuse use the last complete hour.
	WindowMinutes int `env:"SINK_DETECT_WINDOW_MINUTES" envDefault:"5"`
	// HistoryDays is the own-history baseline before the window (SINK_DETECT_HISTORY_DAYS,
	// default 7, 1..90).
	HistoryDays int `env:"SINK_DETECT_HISTORY_DAYS" envDefault:"7"`
	// BurstFactor is k: flag when a minute's attempts exceed k × the account's own p99 per
	// minute (SINK_DETECT_BURST_FACTOR, default 5, 1..1000).
	BurstFactor float64 `env:"SINK_DETECT_BURST_FACTOR" envDefault:"5"`
	// BurstFloorPerMinute is the least p99 assumed, so a new or quiet account is not flagged
	// for modest traffic (SINK_DETECT_BURST_FLOOR_PER_MINUTE, default 60, 1..1000000).
	BurstFloorPerMinute int `env:"SINK_DETECT_BURST_FLOOR_PER_MINUTE" envDefault:"60"`
	// KeyClientsMax is the most distinct client addresses per key, or per account, in an hour
	// (SINK_DETECT_KEY_CLIENTS_MAX, default 20, 1..1000000).
	KeyClientsMax int `env:"SINK_DETECT_KEY_CLIENTS_MAX" envDefault:"20"`
	// CostZScoreMax flags a window whose mean price per request lies more than this many
	// standard deviations above the account's own history (SINK_DETECT_COST_ZSCORE_MAX,
	// default 4, 0.5..1000).
	CostZScoreMax float64 `env:"SINK_DETECT_COST_ZSCORE_MAX" envDefault:"4"`
	// CostHistoryMin is the least finished requests of history before the cost rule applies
	// (SINK_DETECT_COST_HISTORY_MIN, default 30, 2..1000000); CostWindowMin the least in
	// the window (SINK_DETECT_COST_WINDOW_MIN, default 5, 1..1000000).
	CostHistoryMin int `env:"SINK_DETECT_COST_HISTORY_MIN" envDefault:"30"`
	CostWindowMin  int `env:"SINK_DETECT_COST_WINDOW_MIN" envDefault:"5"`
	// RejectSharePermille: flag when every active minute of the window rejects at least this
	// share of attempts (SINK_DETECT_REJECT_SHARE_PERMILLE, default 800, 1..1000) ...
	RejectSharePermille int `env:"SINK_DETECT_REJECT_SHARE_PERMILLE" envDefault:"800"`
	// ... counting minutes with at least RejectAttemptsMin attempts
	// (SINK_DETECT_REJECT_ATTEMPTS_MIN, default 10, 1..1000000), and at least RejectMinutesMin
	// such minutes (SINK_DETECT_REJECT_MINUTES_MIN, default 3, 1..1440).
	RejectAttemptsMin int `env:"SINK_DETECT_REJECT_ATTEMPTS_MIN" envDefault:"10"`
	RejectMinutesMin  int `env:"SINK_DETECT_REJECT_MINUTES_MIN" envDefault:"3"`
	// ExpiredMin and ExpiredSharePermille: flag an hour with at least ExpiredMin expired holds
	// that are at least this share of its starts, or at least LateFinishMin finishes after
	// expiry (SINK_DETECT_EXPIRED_MIN default 10, SINK_DETECT_EXPIRED_SHARE_PERMILLE default
	// 500, SINK_DETECT_LATE_FINISH_MIN default 5).
	ExpiredMin           int `env:"SINK_DETECT_EXPIRED_MIN" envDefault:"10"`
	ExpiredSharePermille int `env:"SINK_DETECT_EXPIRED_SHARE_PERMILLE" envDefault:"500"`
	LateFinishMin        int `env:"SINK_DETECT_LATE_FINISH_MIN" envDefault:"5"`
	// FlagsMax bounds the flags one rule publishes per run (SINK_DETECT_FLAGS_MAX, default
	// 1000, 1..100000).
	FlagsMax int `env:"SINK_DETECT_FLAGS_MAX" envDefault:"1000"`
}

// DefaultConfig returns the defaults above.
func DefaultConfig() Config {
	return Config{IntervalMs: 60000, WindowMinutes: 5, HistoryDays: 7, BurstFactor: 5, BurstFloorPerMinute: 60,
		KeyClientsMax: 20, CostZScoreMax: 4, CostHistoryMin: 30, CostWindowMin: 5, RejectSharePermille: 800,
		RejectAttemptsMin: 10, RejectMinutesMin: 3, ExpiredMin: 10, ExpiredSharePermille: 500, LateFinishMin: 5, FlagsMax: 1000}
}

// Interval is IntervalMs as a duration.
func (c Config) Interval() time.Duration { return time.Duration(c.IntervalMs) * time.Millisecond }

// Validate reports every out-of-range setting, joined, by variable name.
func (c Config) Validate() error {
	var errs []error
	in := bounds.Into[float64](&errs, "")
	if c.IntervalMs != 0 {
		in("SINK_DETECT_INTERVAL_MS", float64(c.IntervalMs), 1000, 86400000)
	}
	in("SINK_DETECT_WINDOW_MINUTES", float64(c.WindowMinutes), 1, 1440)
	in("SINK_DETECT_HISTORY_DAYS", float64(c.HistoryDays), 1, 90)
	in("SINK_DETECT_BURST_FACTOR", c.BurstFactor, 1, 1000)
	in("SINK_DETECT_BURST_FLOOR_PER_MINUTE", float64(c.BurstFloorPerMinute), 1, 1e6)
	in("SINK_DETECT_KEY_CLIENTS_MAX", float64(c.KeyClientsMax), 1, 1e6)
	in("SINK_DETECT_COST_ZSCORE_MAX", c.CostZScoreMax, 0.5, 1000)
	in("SINK_DETECT_COST_HISTORY_MIN", float64(c.CostHistoryMin), 2, 1e6)
	in("SINK_DETECT_COST_WINDOW_MIN", float64(c.CostWindowMin), 1, 1e6)
	in("SINK_DETECT_REJECT_SHARE_PERMILLE", float64(c.RejectSharePermille), 1, 1000)
	in("SINK_DETECT_REJECT_ATTEMPTS_MIN", float64(c.RejectAttemptsMin), 1, 1e6)
	in("SINK_DETECT_REJECT_MINUTES_MIN", float64(c.RejectMinutesMin), 1, 1440)
	in("SINK_DETECT_EXPIRED_MIN", float64(c.ExpiredMin), 1, 1e6)
	in("SINK_DETECT_EXPIRED_SHARE_PERMILLE", float64(c.ExpiredSharePermille), 1, 1000)
	in("SINK_DETECT_LATE_FINISH_MIN", float64(c.LateFinishMin), 1, 1e6)
	in("SINK_DETECT_FLAGS_MAX", float64(c.FlagsMax), 1, 100000)
	if c.RejectMinutesMin > c.WindowMinutes {
		errs = append(errs, fmt.Errorf("SINK_DETECT_REJECT_MINUTES_MIN: %d exceeds SINK_DETECT_WINDOW_MINUTES %d", c.RejectMinutesMin, c.WindowMinutes))
	}
	return errors.Join(errs...)
}
