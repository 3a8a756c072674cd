package pricebook_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

func TestDefaultIsValid(t *testing.T) {
	b := pricebook.Default()
	if b.Version == "" || len(b.Endpoints) < 2 {
		t.Fatalf("default book: %+v", b)
	}
}

func TestPrice(t *testing.T) {
	b := pricebook.Default()
	for _, tc := range []struct {
		name, endpoint, model string
		u                     events.Units
		want                  int64
		err                   error
	}{
		// 10 s × 100,000 µ/s × 4.0 (1080p) × 1.0 (sora-2)
		{"video 1080p", "sora.video", "", events.Units{VideoSeconds: 10, Resolution: "1080p"}, 4_000_000, nil},
		// × 3.0 for sora-2-pro
		{"video pro model", "sora.video", "sora-2-pro", events.Units{VideoSeconds: 10, Resolution: "1080p"}, 12_000_000, nil},
		{"video 480p", "sora.video", "sora-2", events.Units{VideoSeconds: 1, Resolution: "480p"}, 100_000, nil},
		{"video zero", "sora.video", "", events.Units{Resolution: "480p"}, 0, nil},
		// 1000 in × 1.5 µ + 500 out × 6 µ + 2 s compute × 200 µ = 1500 + 3000 + 400
		{"code", "codex.responses", "", events.Units{TokensIn: 1000, TokensOut: 500, ComputeMs: 2000}, 4900, nil},
		// 1 token in = 1.5 µ rounds up once to 2; ×0.5 for codex-mini: 0.75 -> 1
		{"code rounds up once", "codex.responses", "", events.Units{TokensIn: 1}, 2, nil},
		{"code mini rounds up", "codex.responses", "codex-mini", events.Units{TokensIn: 1}, 1, nil},
		{"code mini exact", "codex.responses", "codex-mini", events.Units{TokensIn: 2000}, 1500, nil},
		{"unknown endpoint", "dall-e", "", events.Units{}, 0, pricebook.ErrUnknownEndpoint},
		{"unknown model", "sora.video", "sora-9", events.Units{VideoSeconds: 1, Resolution: "480p"}, 0, pricebook.ErrUnknownModel},
		{"unknown resolution", "sora.video", "", events.Units{VideoSeconds: 1, Resolution: "8k"}, 0, pricebook.ErrUnknownResolution},
		{"overflow", "sora.video", "sora-2-pro", events.Units{VideoSeconds: events.MaxUnit, Resolution: "1080p"}, 0, pricebook.ErrOverflow},
		{"negative", "codex.responses", "", events.Units{TokensOut: -1}, 0, pricebook.ErrOverflow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := b.Price(tc.endpoint, tc.model, tc.u)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("Price = %d, %v; want %d, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestPriceDoesNotAllocate(t *testing.T) {
	b := pricebook.Default()
	u := events.Units{VideoSeconds: 7, Resolution: "720p"}
	if n := testing.AllocsPerRun(1000, func() { _, _ = b.Price("sora.video", "sora-2", u) }); n != 0 {
		t.Fatalf("Price allocates %v times", n)
	}
}

func TestValidateNamesEveryProblem(t *testing.T) {
	bad := `{"version":"","default_tier":"gold","endpoints":{"x":{"kind":"audio","hold_timeout_ms":5,"capacity_inflight":0,
	  "critical_reserve_permille":2000,"default_model":"m","model_permille":{"m":0}}},
	  "tiers":{"t":{"rate_per_minute":0,"burst":0,"max_concurrent":0,"allowance":[{"name":"","length_ms":1,"micros":-1}]}}}`
	_, err := pricebook.Parse([]byte(bad))
	if err == nil {
		t.Fatal("invalid book accepted")
	}
	for _, want := range []string{"version: required", "default_tier", "endpoints.x.kind", "hold_timeout_ms", "capacity_inflight",
		"critical_reserve_permille", "model_permille.m", "tiers.t.rate_per_minute", "burst", "max_concurrent",
		"allowance[0].name", "allowance[0].length_ms", "allowance[0].micros"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %q:\n%v", want, err)
		}
	}
	if _, err := pricebook.Parse([]byte(`{"version":"v","unknown":1}`)); err == nil || !strings.Contains(err.Error(), "unknown") {
		t.Errorf("unknown field accepted: %v", err)
	}
}

// FuzzPrice: for any units, Price never panics, never returns a negative amount, and is
// monotone in each count.
func FuzzPrice(f *testing.F) {
	f.Add(int64(10), int64(1000), int64(500), int64(2000), "1080p", "sora-2")
	f.Add(int64(1<<40), int64(1<<40), int64(1<<40), int64(1<<40), "480p", "codex-mini")
	b := pricebook.Default()
	f.Fuzz(func(t *testing.T, secs, in, out, ms int64, res, model string) {
		for _, ep := range []string{"sora.video", "codex.responses"} {
			u := events.Units{VideoSeconds: secs, Resolution: res, TokensIn: in, TokensOut: out, ComputeMs: ms}
			p, err := b.Price(ep, model, u)
			if err != nil {
				continue
			}
			if p < 0 || p > events.MaxAmountMicros {
				t.Fatalf("%s %+v: price %d out of range", ep, u, p)
			}
			u.TokensIn++
			u.VideoSeconds++
			if p2, err := b.Price(ep, model, u); err == nil && p2 < p {
				t.Fatalf("%s: price fell from %d to %d when usage grew", ep, p, p2)
			}
		}
	})
}

func TestDefaultJSONRoundTrips(t *testing.T) {
	var m map[string]any
	if err := json.Unmarshal(pricebook.DefaultJSON(), &m); err != nil {
		t.Fatal(err)
	}
}

func TestOveragePolicy(t *testing.T) {
	b := pricebook.Default()
	if !b.ChargesExcessFromAvailable() {
		t.Fatal("default policy must charge the excess from the available balance")
	}
	raw := strings.Replace(string(pricebook.DefaultJSON()), `"overage_policy": "available"`, `"overage_policy": "hold_only"`, 1)
	hb, err := pricebook.Parse([]byte(raw))
	if err != nil || hb.ChargesExcessFromAvailable() {
		t.Fatalf("hold_only: %v", err)
	}
	raw = strings.Replace(string(pricebook.DefaultJSON()), `"overage_policy": "available"`, `"overage_policy": "forgive"`, 1)
	if _, err := pricebook.Parse([]byte(raw)); err == nil || !strings.Contains(err.Error(), "overage_policy") {
		t.Fatalf("bad policy accepted: %v", err)
	}
}

func TestPlansValidated(t *testing.T) {
	b := pricebook.Default()
	if len(b.Plans) < 2 {
		t.Fatalf("default book has %d plans, want at least 2", len(b.Plans))
	}
	for id, p := range b.Plans {
		if _, ok := b.Tiers[p.Tier]; !ok || p.Period != pricebook.PeriodMonth {
			t.Fatalf("plan %s: %+v", id, p)
		}
	}
	for _, tc := range []struct {
		plan pricebook.Plan
		want string
	}{
		{pricebook.Plan{Tier: "gold", AllocationMicros: 1, Period: "month"}, "plans.p.tier"},
		{pricebook.Plan{Tier: "free", AllocationMicros: 0, Period: "month"}, "plans.p.allocation_micros"},
		{pricebook.Plan{Tier: "free", AllocationMicros: 1, RolloverCapMicros: -1, Period: "month"}, "plans.p.rollover_cap_micros"},
		{pricebook.Plan{Tier: "free", AllocationMicros: 1, Period: "week"}, "plans.p.period"},
	} {
		c := *b
		c.Plans = map[string]pricebook.Plan{"p": tc.plan}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: Validate() = %v, want an error naming %s", tc.plan, err, tc.want)
		}
	}
	c := *b
	c.Plans = map[string]pricebook.Plan{"bad id!": {Tier: "free", AllocationMicros: 1, Period: "month"}}
	if err := c.Validate(); err == nil {
		t.Fatal("a plan with a bad id was accepted")
	}
}
