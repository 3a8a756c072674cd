package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/tallyctl/internal/waitfor"

	"github.com/tallyhq/tally/services/admitter"
	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/sink"
	"github.com/tallyhq/tally/services/sink/detect"
	"github.com/tallyhq/tally/shared/events"
)

// TestAbuseClosedLoop: a bursting account is flagged by the detector (ClickHouse rollups),
// the flag flows through the ledger into a reduced history factor, and the admitter throttles
// the account's next requests; a clean account keeps its bonus.
func TestAbuseClosedLoop(t *testing.T) {
	st, _ := startStackTuned(t, func(a *admitter.Config, l *ledger.Config, s *sink.Config) {
		s.Detect.BurstFactor, s.Detect.BurstFloorPerMinute = 2, 20 // flag above 40 attempts in a minute
		s.Detect.WindowMinutes, s.Detect.RejectMinutesMin = 1, 1
		l.CleanRequestsMin = 10 // a clean account earns its bonus after 10 requests
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl, err := client.New(client.Config{BaseURL: st.AdmitterURL, APIKey: st.APIKey, AttemptsMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	const bursty, clean = "acct_bursty", "acct_clean"
	for _, acct := range []string{bursty, clean} {
		if code := admin(t, st, "PUT", "/v1/accounts/"+acct, map[string]any{"tier": "pro", "priority": "standard"}, nil); code != 202 {
			t.Fatalf("set tier: %d", code)
		}
		if code := admin(t, st, "POST", "/v1/accounts/"+acct+"/grants", map[string]any{"amount_micros": 1_000_000_000, "source": "purchase"}, nil); code != 202 {
			t.Fatalf("grant: %d", code)
		}
	}
	// Wait until the admitter knows both accounts as pro with their credits.
	seq := 0
	admitOnce := func(acct string) (*api.AdmitResponse, error) {
		seq++
		resp, err := cl.Admit(ctx, api.AdmitRequest{RequestID: fmt.Sprintf("%s-%d", acct, seq), AccountID: acct,
			Endpoint: "codex.responses", Estimate: events.Units{TokensIn: 1000, TokensOut: 1000}})
		if err == nil {
			_, ferr := cl.Finish(ctx, api.FinishRequest{RequestID: resp.RequestID, Status: events.StatusSucceeded,
				Usage: events.Units{TokensIn: 900, TokensOut: 800}, DurationMs: 20})
			if ferr != nil {
				t.Fatalf("finish: %v", ferr)
			}
		}
		var denied *client.DeniedError
		if errors.As(err, &denied) {
			return denied.Response, err
		}
		return resp, err
	}
	waitfor.Eventually(t, "accounts reach the admitter", 30*time.Second, func() error {
		for _, acct := range []string{bursty, clean} {
			r, err := admitOnce(acct)
			if err != nil || r.Tier != "pro" {
				return fmt.Errorf("%s: %+v %v", acct, r, err)
			}
		}
		return nil
	})
	// The clean account makes a modest number of requests; the bursty one hammers.
	for i := 0; i < 15; i++ {
		if _, err := admitOnce(clean); err != nil {
			t.Fatalf("clean account denied: %v", err)
		}
	}
	burstStart := time.Now()
	for i := 0; i < 120; i++ {
		_, _ = admitOnce(bursty) // some are rate limited: rejections count as attempts too
	}
	flaggedAt := time.Now()

	// The detector evaluates the minute that holds the burst, once its rows are in ClickHouse.
	var flags []events.AbuseFlagged
	waitfor.Eventually(t, "burst flagged", 60*time.Second, func() error {
		// The burst may straddle a minute boundary: evaluate each minute it touched.
		flags = nil
		for m := burstStart.Truncate(time.Minute); !m.After(flaggedAt); m = m.Add(time.Minute) {
			f, err := st.Sink.Detector().RunOnce(ctx, m.Add(time.Minute))
			if err != nil {
				return err
			}
			flags = append(flags, f...)
		}
		for _, f := range flags {
			if f.AccountID == bursty && f.Rule == detect.RuleBurst {
				return nil
			}
		}
		return fmt.Errorf("no burst flag yet: %+v", flags)
	})
	for _, f := range flags {
		if f.AccountID == clean {
			t.Fatalf("clean account flagged: %+v", f)
		}
	}

	// The flag reaches the admitter through the ledger as a reduced history factor: the bursty
	// account is throttled below the clean account, which keeps its bonus.
	var b, c *api.AdmitResponse
	waitfor.Eventually(t, "history factors at the admitter", 60*time.Second, func() error {
		var err error
		b, err = admitOnce(bursty)
		if b == nil {
			return fmt.Errorf("bursty: %v", err)
		}
		c, err = admitOnce(clean)
		if c == nil {
			return fmt.Errorf("clean: %v", err)
		}
		if b.Remaining.HistoryFactorPermille >= 1000 || c.Remaining.HistoryFactorPermille <= 1000 {
			return fmt.Errorf("history factors: bursty %d, clean %d", b.Remaining.HistoryFactorPermille, c.Remaining.HistoryFactorPermille)
		}
		return nil
	})
	if b.Remaining.RatePerMinute >= c.Remaining.RatePerMinute || b.Remaining.Burst >= c.Remaining.Burst {
		t.Fatalf("bursty account not throttled below the clean one: bursty %+v, clean %+v", b.Remaining, c.Remaining)
	}
	t.Logf("bursty: history %d‰, %d/min burst %d; clean: history %d‰, %d/min burst %d",
		b.Remaining.HistoryFactorPermille, b.Remaining.RatePerMinute, b.Remaining.Burst,
		c.Remaining.HistoryFactorPermille, c.Remaining.RatePerMinute, c.Remaining.Burst)
}
