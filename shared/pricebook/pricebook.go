// Package pricebook is Tally's versioned price book and tier policy: pure functions that turn
// usage units into micro-credits, plus each tier's base limits and included allowance. It is
// loaded from a JSON file, validated at start-up, and its Version is stamped on every event.
package pricebook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"os"
	"slices"

	"github.com/tallyhq/tally/shared/events"
)

// Endpoint kinds.
const (
	KindVideo = "video" // seconds × resolution multiplier × model multiplier
	KindCode  = "code"  // tokens in and out per 1k, plus compute-seconds, × model multiplier
)

// BookBytesMax bounds the price book file.
const BookBytesMax = 1 << 20

// Book is one version of the price book.
type Book struct {
	Version   string              `json:"version"`
	Endpoints map[string]Endpoint `json:"endpoints"`
	Tiers     map[string]Tier     `json:"tiers"`
	// DefaultTier applies to accounts the ledger has not yet seen an account.updated for.
	DefaultTier string `json:"default_tier"`
	// OveragePolicy says what happens when a request costs more than its hold: "available"
	// (the default when empty) charges the excess from the available balance and records only
	// what it cannot pay as overage; "hold_only" records all of the excess as overage. It is in
	// the book, not in one service's settings, so the admitters and the ledger always agree.
	OveragePolicy string `json:"overage_policy,omitempty"`
	// Plans are the subscription plans, by id (see Plan). Optional.
	Plans map[string]Plan `json:"plans,omitempty"`
}

// PeriodMonth is the only plan period: monthly on the subscription's anchor day.
const PeriodMonth = "month"

// PlansMax bounds the plans of one book.
const PlansMax = 1000

// Plan is a subscription plan: subscribing sets the account's tier to Tier and grants
// AllocationMicros at the start of every period (expiring at its end); at a period end up to
// RolloverCapMicros of what is left of that period's allocation carries into the next period.
type Plan struct {
	Tier              string `json:"tier"`
	AllocationMicros  int64  `json:"allocation_micros"`
	RolloverCapMicros int64  `json:"rollover_cap_micros"`
	Period            string `json:"period"`
}

// Plan returns the plan named id.
func (b *Book) Plan(id string) (Plan, bool) {
	p, ok := b.Plans[id]
	return p, ok
}

// Overage policies.
const (
	OverageFromAvailable = "available"
	OverageHoldOnly      = "hold_only"
)

// ChargesExcessFromAvailable reports whether a cost above the hold is charged from the
// available balance before it becomes overage.
func (b *Book) ChargesExcessFromAvailable() bool { return b.OveragePolicy != OverageHoldOnly }

// Endpoint prices one endpoint. Multipliers are permille (1000 = ×1.0).
type Endpoint struct {
	Kind string `json:"kind"`
	// HoldTimeoutMs is how long a hold may stay open before the ledger expires it.
	HoldTimeoutMs int64 `json:"hold_timeout_ms"`
	// CapacityInflight is the endpoint's in-flight capacity per admitter, used for overload
	// shedding; CriticalReservePermille of it is kept for critical traffic.
	CapacityInflight        int64            `json:"capacity_inflight"`
	CriticalReservePermille int64            `json:"critical_reserve_permille"`
	ModelPermille           map[string]int64 `json:"model_permille"`
	DefaultModel            string           `json:"default_model"`

	// Video pricing.
	MicrosPerSecond    int64            `json:"micros_per_second,omitempty"`
	ResolutionPermille map[string]int64 `json:"resolution_permille,omitempty"`

	// Code pricing.
	MicrosPer1kTokensIn    int64 `json:"micros_per_1k_tokens_in,omitempty"`
	MicrosPer1kTokensOut   int64 `json:"micros_per_1k_tokens_out,omitempty"`
	MicrosPerComputeSecond int64 `json:"micros_per_compute_second,omitempty"`
}

// Window is one included-allowance window, aligned to the Unix epoch.
type Window struct {
	Name     string `json:"name"`
	LengthMs int64  `json:"length_ms"`
	Micros   int64  `json:"micros"`
}

// Tier holds a tier's base limits (per account per endpoint) and included allowance.
type Tier struct {
	RatePerMinute int64    `json:"rate_per_minute"`
	Burst         int64    `json:"burst"`
	ConcurrentMax int64    `json:"max_concurrent"`
	Allowance     []Window `json:"allowance"`
}

// Errors returned by Price.
var (
	ErrUnknownEndpoint   = errors.New("unknown endpoint")
	ErrUnknownModel      = errors.New("unknown model")
	ErrUnknownResolution = errors.New("unknown resolution")
	ErrOverflow          = errors.New("price out of range")
)

// Load reads and validates a price book file.
func Load(path string) (*Book, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("pricebook: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(ioLimit(f)); err != nil {
		return nil, fmt.Errorf("pricebook: read %s: %w", path, err)
	}
	if buf.Len() > BookBytesMax {
		return nil, fmt.Errorf("pricebook: %s is larger than %d bytes", path, BookBytesMax)
	}
	b, err := Parse(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("pricebook: %s: %w", path, err)
	}
	return b, nil
}

// Parse decodes (unknown fields are errors) and validates a price book.
func Parse(data []byte) (*Book, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var b Book
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return &b, nil
}

// Validate reports every problem in the book, joined, each named by its path.
func (b *Book) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if err := events.CheckID("version", b.Version); err != nil {
		errs = append(errs, err)
	}
	if len(b.Endpoints) == 0 {
		add("endpoints: at least one required")
	}
	switch b.OveragePolicy {
	case "", OverageFromAvailable, OverageHoldOnly:
	default:
		add("overage_policy: want available or hold_only, got %q", b.OveragePolicy)
	}
	for _, name := range slices.Sorted(maps.Keys(b.Endpoints)) {
		e := b.Endpoints[name]
		p := "endpoints." + name
		if err := events.CheckID(p, name); err != nil {
			errs = append(errs, err)
		}
		if e.HoldTimeoutMs < 1000 || e.HoldTimeoutMs > 24*3600*1000 {
			add("%s.hold_timeout_ms: %d out of range [1000, 86400000]", p, e.HoldTimeoutMs)
		}
		if e.CapacityInflight < 1 || e.CapacityInflight > 1_000_000 {
			add("%s.capacity_inflight: %d out of range [1, 1000000]", p, e.CapacityInflight)
		}
		if e.CriticalReservePermille < 0 || e.CriticalReservePermille > 1000 {
			add("%s.critical_reserve_permille: %d out of range [0, 1000]", p, e.CriticalReservePermille)
		}
		checkMultipliers(&errs, p+".model_permille", e.ModelPermille, true)
		if _, ok := e.ModelPermille[e.DefaultModel]; !ok {
			add("%s.default_model: %q is not in model_permille", p, e.DefaultModel)
		}
		switch e.Kind {
		case KindVideo:
			checkRate(&errs, p+".micros_per_second", e.MicrosPerSecond, true)
			checkMultipliers(&errs, p+".resolution_permille", e.ResolutionPermille, true)
		case KindCode:
			checkRate(&errs, p+".micros_per_1k_tokens_in", e.MicrosPer1kTokensIn, false)
			checkRate(&errs, p+".micros_per_1k_tokens_out", e.MicrosPer1kTokensOut, false)
			checkRate(&errs, p+".micros_per_compute_second", e.MicrosPerComputeSecond, false)
		default:
			add("%s.kind: want video or code, got %q", p, e.Kind)
		}
	}
	if len(b.Tiers) == 0 {
		add("tiers: at least one required")
	}
	if _, ok := b.Tiers[b.DefaultTier]; !ok {
		add("default_tier: %q is not a tier", b.DefaultTier)
	}
	for _, name := range slices.Sorted(maps.Keys(b.Tiers)) {
		t := b.Tiers[name]
		p := "tiers." + name
		if err := events.CheckID(p, name); err != nil {
			errs = append(errs, err)
		}
		if t.RatePerMinute < 1 || t.RatePerMinute > 1_000_000 {
			add("%s.rate_per_minute: %d out of range [1, 1000000]", p, t.RatePerMinute)
		}
		if t.Burst < 1 || t.Burst > 1_000_000 {
			add("%s.burst: %d out of range [1, 1000000]", p, t.Burst)
		}
		if t.ConcurrentMax < 1 || t.ConcurrentMax > 100_000 {
			add("%s.max_concurrent: %d out of range [1, 100000]", p, t.ConcurrentMax)
		}
		if len(t.Allowance) > 4 {
			add("%s.allowance: at most 4 windows", p)
		}
		for i, w := range t.Allowance {
			if err := events.CheckID(fmt.Sprintf("%s.allowance[%d].name", p, i), w.Name); err != nil {
				errs = append(errs, err)
			}
			if w.LengthMs < 60_000 || w.LengthMs > 31*24*3600*1000 {
				add("%s.allowance[%d].length_ms: %d out of range [60000, 2678400000]", p, i, w.LengthMs)
			}
			if w.Micros < 0 || w.Micros > events.MaxAmountMicros {
				add("%s.allowance[%d].micros: %d out of range", p, i, w.Micros)
			}
		}
	}
	if len(b.Plans) > PlansMax {
		add("plans: at most %d", PlansMax)
	}
	for _, id := range slices.Sorted(maps.Keys(b.Plans)) {
		pl := b.Plans[id]
		p := "plans." + id
		if err := events.CheckID(p, id); err != nil {
			errs = append(errs, err)
		}
		if _, ok := b.Tiers[pl.Tier]; !ok {
			add("%s.tier: %q is not a tier", p, pl.Tier)
		}
		if pl.AllocationMicros < 1 || pl.AllocationMicros > events.MaxAmountMicros {
			add("%s.allocation_micros: %d out of range [1, %d]", p, pl.AllocationMicros, events.MaxAmountMicros)
		}
		if pl.RolloverCapMicros < 0 || pl.RolloverCapMicros > events.MaxAmountMicros {
			add("%s.rollover_cap_micros: %d out of range [0, %d]", p, pl.RolloverCapMicros, events.MaxAmountMicros)
		}
		if pl.Period != PeriodMonth {
			add("%s.period: want %q, got %q", p, PeriodMonth, pl.Period)
		}
	}
	return errors.Join(errs...)
}

// Price returns the cost in micro-credits of units on an endpoint and model ("" = the
// endpoint's default model), rounded up once to the micro-credit. It does not allocate.
func (b *Book) Price(endpoint, model string, u events.Units) (int64, error) {
	e, ok := b.Endpoints[endpoint]
	if !ok {
		return 0, ErrUnknownEndpoint
	}
	return e.Price(model, u)
}

// Price prices units on this endpoint; see Book.Price.
func (e *Endpoint) Price(model string, u events.Units) (int64, error) {
	if model == "" {
		model = e.DefaultModel
	}
	mp, ok := e.ModelPermille[model]
	if !ok {
		return 0, ErrUnknownModel
	}
	if u.VideoSeconds < 0 || u.TokensIn < 0 || u.TokensOut < 0 || u.ComputeMs < 0 {
		return 0, ErrOverflow
	}
	switch e.Kind {
	case KindVideo:
		rp, ok := e.ResolutionPermille[u.Resolution]
		if !ok {
			return 0, ErrUnknownResolution
		}
		// seconds × µ/s × res‰ × model‰ / 10^6, rounded up.
		base, ok := mul(uint64(u.VideoSeconds), uint64(e.MicrosPerSecond))
		if !ok {
			return 0, ErrOverflow
		}
		scaled, ok := mul(base, uint64(rp))
		if !ok {
			return 0, ErrOverflow
		}
		return mulDivCeil(scaled, uint64(mp), 1_000_000)
	default:
		// Everything in milli-micro-credits, then × model‰ / 10^6, rounded up once.
		var sum uint64
		for _, t := range [3][2]int64{{u.TokensIn, e.MicrosPer1kTokensIn}, {u.TokensOut, e.MicrosPer1kTokensOut}, {u.ComputeMs, e.MicrosPerComputeSecond}} {
			p, ok := mul(uint64(t[0]), uint64(t[1]))
			if !ok {
				return 0, ErrOverflow
			}
			var carry uint64
			sum, carry = bits.Add64(sum, p, 0)
			if carry != 0 {
				return 0, ErrOverflow
			}
		}
		return mulDivCeil(sum, uint64(mp), 1_000_000)
	}
}

// Tier returns the named tier, or the default tier when name is unknown or empty.
func (b *Book) Tier(name string) (Tier, string) {
	if t, ok := b.Tiers[name]; ok {
		return t, name
	}
	return b.Tiers[b.DefaultTier], b.DefaultTier
}

func mul(a, b uint64) (uint64, bool) {
	hi, lo := bits.Mul64(a, b)
	return lo, hi == 0
}

func mulDivCeil(a, m, d uint64) (int64, error) {
	hi, lo := bits.Mul64(a, m)
	if hi >= d {
		return 0, ErrOverflow
	}
	q, r := bits.Div64(hi, lo, d)
	if r != 0 {
		q++
	}
	if q > uint64(events.MaxAmountMicros) {
		return 0, ErrOverflow
	}
	return int64(q), nil
}

func checkRate(errs *[]error, path string, v int64, positive bool) {
	lo := int64(0)
	if positive {
		lo = 1
	}
	if v < lo || v > 1_000_000_000_000 {
		*errs = append(*errs, fmt.Errorf("%s: %d out of range [%d, 10^12]", path, v, lo))
	}
}

func checkMultipliers(errs *[]error, path string, m map[string]int64, required bool) {
	if required && len(m) == 0 {
		*errs = append(*errs, fmt.Errorf("%s: at least one entry required", path))
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if v := m[k]; v < 1 || v > 100_000 {
			*errs = append(*errs, fmt.Errorf("%s.%s: %d out of range [1, 100000]", path, k, v))
		}
	}
}
