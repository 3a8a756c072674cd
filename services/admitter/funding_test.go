package admitter

import (
	"encoding/json"
	"testing"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// checkSplitAnswer checks the finish answer's split of the cost.
func checkSplitAnswer(t *testing.T, body []byte, allowance, credits, overage int64) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]int64{"allowance_micros": allowance, "credits_micros": credits, "overage_micros": overage} {
		if got, ok := m[k].(float64); !ok || int64(got) != want {
			t.Fatalf("finish answer %s = %v, want %d: %s", k, m[k], want, body)
		}
	}
}

func videoReq(id, acct string, seconds int64) api.AdmitRequest {
	return api.AdmitRequest{RequestID: id, AccountID: acct, Endpoint: "sora.video",
		Estimate: events.Units{VideoSeconds: seconds, Resolution: "720p"}} // 200,000 µ a second
}

// TestSplitFundingHTTP: 1 credit of allowance left and 1.5 credits of balance fund a
// 2-credit request, 1 from each; the answer says so.
func TestSplitFundingHTTP(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, bal("split1", "free", 1_500_000)) // free: 5h window of 2 credits
	s := start(t, testConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 1 })
	// The first credit of the window is spent.
	if a := post(t, s.url+api.PathAdmit, testSecret, videoReq("r0", "split1", 5)); a.status != 200 {
		t.Fatalf("first admit: %d %s", a.status, a.body)
	}
	if f := post(t, s.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "r0", Status: "succeeded",
		Usage: events.Units{VideoSeconds: 5, Resolution: "720p"}}); f.status != 200 {
		t.Fatalf("first finish: %d %s", f.status, f.body)
	}
	a := post(t, s.url+api.PathAdmit, testSecret, videoReq("r1", "split1", 10))
	var ar api.AdmitResponse
	a.decode(t, &ar)
	if a.status != 200 || !ar.Allowed || ar.Funding != "split" || ar.AllowanceMicros != 1_000_000 || ar.HoldMicros != 1_000_000 ||
		ar.ReservedMicros != 2_000_000 || ar.Remaining.AvailableMicros != 500_000 {
		t.Fatalf("split admit: %d %s", a.status, a.body)
	}
	f := post(t, s.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "r1", Status: "succeeded",
		Usage: events.Units{VideoSeconds: 10, Resolution: "720p"}})
	var fr api.FinishResponse
	f.decode(t, &fr)
	if f.status != 200 || fr.Funding != "split" || fr.CostMicros != 2_000_000 || fr.ChargedMicros != 2_000_000 || fr.OverageMicros != 0 {
		t.Fatalf("split finish: %d %s", f.status, f.body)
	}
	checkSplitAnswer(t, f.body, 1_000_000, 1_000_000, 0)
	evs := readEvents(t, c, func(e []events.Event) bool { return count(e, events.TypeRequestFinished, "r1") == 1 })
	for _, e := range evs {
		switch p := e.Payload.(type) {
		case events.RequestStarted:
			if p.RequestID == "r1" && (p.Funding != events.FundingSplit || p.AllowanceMicros != 1_000_000 || p.HoldMicros != 1_000_000) {
				t.Fatalf("started event: %+v", p)
			}
		case events.RequestFinished:
			if p.RequestID == "r1" && (p.AllowanceMicros != 1_000_000 || p.CreditsMicros != 1_000_000 || p.OverageMicros != 0) {
				t.Fatalf("finished event: %+v", p)
			}
		}
	}
}

// TestAllowanceOverrunHTTP: an allowance-funded job that cost 240 credits against a 20-credit
// window is charged 20 to the allowance and 220 to credits (100 available) and overage (120).
func TestAllowanceOverrunHTTP(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, bal("plus1", "plus", 100_000_000)) // plus: 5h window of 20 credits
	s := start(t, testConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 1 })
	a := post(t, s.url+api.PathAdmit, testSecret, videoReq("r1", "plus1", 100)) // 20 credits
	var ar api.AdmitResponse
	a.decode(t, &ar)
	if a.status != 200 || ar.Funding != "allowance" || ar.AllowanceMicros != 20_000_000 {
		t.Fatalf("admit: %d %s", a.status, a.body)
	}
	f := post(t, s.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "r1", Status: "succeeded",
		Usage: events.Units{VideoSeconds: 1200, Resolution: "720p"}}) // 240 credits
	var fr api.FinishResponse
	f.decode(t, &fr)
	if f.status != 200 || fr.CostMicros != 240_000_000 || fr.ChargedMicros != 120_000_000 || fr.OverageMicros != 120_000_000 {
		t.Fatalf("finish: %d %s", f.status, f.body)
	}
	checkSplitAnswer(t, f.body, 20_000_000, 100_000_000, 120_000_000)
	s.mu.Lock()
	snap, _ := s.table.Account("plus1")
	s.mu.Unlock()
	if snap.AvailableMicros+snap.PendingAvailMicros != 0 || snap.PendingAllowMicros != 20_000_000 {
		t.Fatalf("local view: %+v", snap)
	}
	evs := readEvents(t, c, func(e []events.Event) bool { return count(e, events.TypeRequestFinished, "r1") == 1 })
	for _, e := range evs {
		if p, ok := e.Payload.(events.RequestFinished); ok && p.RequestID == "r1" &&
			(p.AllowanceMicros != 20_000_000 || p.CreditsMicros != 100_000_000 || p.OverageMicros != 120_000_000) {
			t.Fatalf("finished event: %+v", p)
		}
	}
}
