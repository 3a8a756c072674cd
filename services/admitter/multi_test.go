package admitter

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestThreeInstancesOverAdmission runs 3 admitters against one cluster and one account, with
// clients hammering all three at once, and measures how far the admitted total goes past the
// account's concurrency limit, burst and credit balance. No ledger runs: the only way an
// admitter learns of another's holds is the events topic (ADMITTER_FOLLOW_PEERS).
func TestThreeInstancesOverAdmission(t *testing.T) {
	for _, mode := range []struct{ follow, confirm bool }{{true, true}, {true, false}, {false, false}} {
		follow := mode.follow
		t.Run(fmt.Sprintf("follow_peers=%v,confirm=%v", mode.follow, mode.confirm), func(t *testing.T) {
			c := kafkatest.Start(t)
			// conc3x2: max_concurrent 6; tiny: burst 2 × 1.5 = 3; money: 100,000 µ funds 13 × 7,500.
			seed(t, c, bal("conc", "conc3", 1e12), bal("rate", "tiny", 1e12), bal("money", "wide", 100_000))
			var inst []*running
			for i := 0; i < 3; i++ {
				cfg := testConfig(t, c)
				cfg.Instances = 3
				cfg.FollowPeers = follow
				cfg.ConfirmInLogOrder = mode.confirm
				cfg.InstanceID = fmt.Sprint("i", i)
				inst = append(inst, start(t, cfg))
			}
			var answersMu sync.Mutex
			answers := map[string]string{} // request id → first answer (status and body)
			hammer := func(acct string, perInstance int, finish bool, req func(id string) api.AdmitRequest) (allowed int64) {
				var n atomic.Int64
				var wg sync.WaitGroup
				for i, s := range inst {
					for g := 0; g < 3; g++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for k := 0; k < perInstance/3; k++ {
								id := fmt.Sprintf("%s-%d-%d-%d", acct, i, g, k)
								a := post(t, s.url+api.PathAdmit, testSecret, req(id))
								answersMu.Lock()
								answers[id] = fmt.Sprintf("%d %s", a.status, a.body)
								answersMu.Unlock()
								if a.status == 200 {
									n.Add(1)
								} else if a.status != 429 {
									t.Errorf("%s: %d %s", id, a.status, a.body)
								}
							}
						}()
					}
				}
				wg.Wait()
				return n.Load()
			}
			// Concurrency: conc3 has max_concurrent 3 → 1 per instance; nothing finishes.
			conc := hammer("conc", 30, false, func(id string) api.AdmitRequest { return codeReq(id, "conc") })
			// Rate: tiny's burst of 3 within one instant → 1 per instance.
			rate := hammer("rate", 30, false, func(id string) api.AdmitRequest {
				return api.AdmitRequest{RequestID: id, AccountID: "rate", Endpoint: "codex.responses", Estimate: events.Units{TokensIn: 1}}
			})
			// Credits: 100,000 µ at 7,500 µ per hold → 13 fundable.
			money := hammer("money", 90, false, func(id string) api.AdmitRequest { return codeReq(id, "money") })
			held := money * 7_500
			t.Logf("3 instances, follow_peers=%v confirm_in_log_order=%v: concurrency admitted %d (limit 3), burst admitted %d (limit 3, rate may refill), credits admitted %d holds = %d µ (balance 100,000 µ, 13 fundable): over-admission %d requests, %d µ",
				follow, mode.confirm, conc, rate, money, held, max(money-13, 0), max(held-100_000, 0))
			if conc > 3 {
				t.Errorf("concurrency over-admitted: %d > 3", conc)
			}
			if rate > 3+3 { // +1 per instance if a refill (1/s per instance) lands during the burst
				t.Errorf("rate over-admitted: %d", rate)
			}
			if money < 1 || (!mode.confirm && money < 13) {
				t.Errorf("under-admitted credits: %d", money)
			}
			if mode.confirm && money > 13 {
				t.Errorf("log-order confirmation over-admitted: %d > 13", money)
			}
			// Without log-order confirmation each admitter can at worst spend the whole balance
			// on its own: N × 13. With peer following it is usually far less, but it depends on
			// timing (measured 4–13 over), so only the hard bound is asserted.
			if money > 3*13 {
				t.Errorf("credits over-admitted beyond N × balance: %d", money)
			}
			// Every repeat replays the first answer byte for byte, revoked admissions (answered
			// as insufficient_credits after their start was published) included.
			revoked := 0.0
			for i, s := range inst {
				revoked += counterValue(t, s.Service, "tally_admitter_revoked_total")
				for g := 0; g < 3; g++ {
					for k := 0; k < 90/3; k++ {
						id := fmt.Sprintf("money-%d-%d-%d", i, g, k)
						a := post(t, s.url+api.PathAdmit, testSecret, codeReq(id, "money"))
						if got := fmt.Sprintf("%d %s", a.status, a.body); got != answers[id] {
							t.Errorf("%s repeat:\n%s\nfirst:\n%s", id, got, answers[id])
						}
					}
				}
			}
			t.Logf("revoked admissions: %v", revoked)
		})
	}
}

// counterValue is the value of counter name in s's registry (0 when it has no sample).
func counterValue(t *testing.T, s *Service, name string) float64 {
	t.Helper()
	mfs, err := s.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			v := 0.0
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
			return v
		}
	}
	return 0
}
