package admitter

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// keyed is an event of the events topic with its Kafka key.
type keyed struct {
	key string
	ev  events.Event
}

// readKeyed reads the events topic from the start, with each record's key, until stop says
// enough or 20 s pass.
func readKeyed(t *testing.T, c *kafkatest.Cluster, stop func([]keyed) bool) []keyed {
	t.Helper()
	return readEventsAs(t, c, func(m kafka.Message, ev events.Event) keyed { return keyed{string(m.Key), ev} }, stop)
}

// find returns the event of type typ of request id, or fails.
func find(t *testing.T, evs []keyed, typ, id string) keyed {
	t.Helper()
	for _, k := range evs {
		if k.ev.Type == typ && eventRequestID(k.ev) == id {
			return k
		}
	}
	t.Fatalf("no %s of %s among %d events", typ, id, len(evs))
	return keyed{}
}

func eventRequestID(e events.Event) string {
	switch p := e.Payload.(type) {
	case events.RequestStarted:
		return p.RequestID
	case events.RequestRejected:
		return p.RequestID
	case events.RequestFinished:
		return p.RequestID
	}
	return ""
}

// has reports whether events of types for each request id are all read.
func has(want map[string]string) func([]keyed) bool {
	return func(evs []keyed) bool {
		for id, typ := range want {
			found := false
			for _, k := range evs {
				found = found || (k.ev.Type == typ && eventRequestID(k.ev) == id)
			}
			if !found {
				return false
			}
		}
		return true
	}
}

// fundedBal is project p's balance.updated, funded by org.
func fundedBal(p, tier, org string) events.BalanceUpdated {
	b := bal(p, tier, 0)
	b.FundingAccountID = org
	return b
}

// answerField returns a top-level field of a JSON answer (nil when absent).
func answerField(t *testing.T, a answer, name string) any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("answer %s: %v", a.body, err)
	}
	return m[name]
}

func code1kReq(id, acct string) api.AdmitRequest {
	return api.AdmitRequest{RequestID: id, AccountID: acct, Endpoint: "codex.responses",
		Estimate: events.Units{TokensIn: 1000, TokensOut: 1000}} // 7,500 µ
}

// TestOrgSharedBalanceHTTP: two projects funded by one organization draw on its one balance:
// once the first holds 7,500 of its 10,000, the second is denied insufficient_credits. The
// started and finished events name the project as account_id and the organization as
// funding_account_id, and are keyed by the organization; the rejection stays the project's.
func TestOrgSharedBalanceHTTP(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, bal("org", "enterprise", 10_000), fundedBal("p1", "enterprise", "org"), fundedBal("p2", "enterprise", "org"))
	s := start(t, testConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 3 })

	a1 := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r1", "p1"))
	if a1.status != 200 || answerField(t, a1, "funding_account_id") != "org" {
		t.Fatalf("p1: %d %s", a1.status, a1.body)
	}
	a2 := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r2", "p2"))
	if a2.status != 429 || answerField(t, a2, "reason") != api.ReasonInsufficientCredits ||
		answerField(t, a2, "funding_account_id") != "org" {
		t.Fatalf("p2 after p1's hold on the org: %d %s", a2.status, a2.body)
	}
	f := post(t, s.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "r1", Status: "succeeded",
		Usage: events.Units{TokensIn: 1000, TokensOut: 1000}})
	if f.status != 200 {
		t.Fatalf("finish: %d %s", f.status, f.body)
	}
	evs := readKeyed(t, c, has(map[string]string{"r1": events.TypeRequestFinished, "r2": events.TypeRequestRejected}))
	st := find(t, evs, events.TypeRequestStarted, "r1")
	if p := st.ev.Payload.(events.RequestStarted); p.AccountID != "p1" || p.FundingAccountID != "org" || st.key != "org" || st.ev.Subject != "org" {
		t.Fatalf("started: key %q subject %q %+v", st.key, st.ev.Subject, p)
	}
	fin := find(t, evs, events.TypeRequestFinished, "r1")
	if p := fin.ev.Payload.(events.RequestFinished); p.AccountID != "p1" || p.FundingAccountID != "org" || fin.key != "org" ||
		fin.ev.Subject != "org" || p.CreditsMicros != 7_500 {
		t.Fatalf("finished: key %q subject %q %+v", fin.key, fin.ev.Subject, p)
	}
	if rej := find(t, evs, events.TypeRequestRejected, "r2"); rej.key != "p2" || rej.ev.Subject != "p2" {
		t.Fatalf("rejected: key %q subject %q", rej.key, rej.ev.Subject)
	}
}

// TestProjectBudgetHTTP: the organization's budget of 10,000 µ a month for p1 admits one
// 7,500 µ request and denies the next 429 budget_exhausted (its open request is what stands in
// the way: Retry-After the concurrency retry), also after the first finished (no ledger view
// includes its cost yet), while p2, funded by the same organization without a budget,
// continues; p3, whose 5,000 µ budget a 7,500 µ estimate exceeds alone, is told to retry at
// the next UTC month (capped).
func TestProjectBudgetHTTP(t *testing.T) {
	c := kafkatest.Start(t)
	now := time.Now().UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	org := bal("org", "enterprise", 1_000_000_000)
	org.Projects = []events.ProjectSpend{{ProjectID: "p1", BudgetMicros: 10_000, PeriodStart: month},
		{ProjectID: "p3", BudgetMicros: 5_000, PeriodStart: month}}
	seed(t, c, org, fundedBal("p1", "enterprise", "org"), fundedBal("p2", "enterprise", "org"), fundedBal("p3", "enterprise", "org"))
	cfg := testConfig(t, c)
	s := start(t, cfg)
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 4 })

	if a := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r1", "p1")); a.status != 200 {
		t.Fatalf("p1 first: %d %s", a.status, a.body)
	}
	a := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r2", "p1"))
	if a.status != 429 || answerField(t, a, "reason") != "budget_exhausted" {
		t.Fatalf("p1 second: %d %s", a.status, a.body)
	}
	if retry, _ := answerField(t, a, "retry_after_ms").(float64); int64(retry) != cfg.RetryConcurrencyMs {
		t.Fatalf("p1 second: retry_after_ms %v, want the concurrency retry %d: %s", retry, cfg.RetryConcurrencyMs, a.body)
	}
	before := time.Now()
	a = post(t, s.url+api.PathAdmit, testSecret, code1kReq("r2b", "p3"))
	if a.status != 429 || answerField(t, a, "reason") != "budget_exhausted" {
		t.Fatalf("p3: %d %s", a.status, a.body)
	}
	retry, _ := answerField(t, a, "retry_after_ms").(float64)
	next := month.AddDate(0, 1, 0)
	want := min(time.Until(next), 7*24*time.Hour)
	if got := time.Duration(retry) * time.Millisecond; got <= 0 || got > min(next.Sub(before), 7*24*time.Hour) || got < want-time.Minute {
		t.Fatalf("retry_after_ms %v, want about %v: %s", got, want, a.body)
	}
	if a.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After header")
	}
	if a := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r3", "p2")); a.status != 200 {
		t.Fatalf("p2: %d %s", a.status, a.body)
	}
	// No ledger runs: p1's finished 7,500 µ still counts (no view includes it), so p1 stays
	// capped after its finish.
	if f := post(t, s.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "r1", Status: "succeeded",
		Usage: events.Units{TokensIn: 1000, TokensOut: 1000}}); f.status != 200 {
		t.Fatalf("finish: %d %s", f.status, f.body)
	}
	if a := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r4", "p1")); a.status != 429 || answerField(t, a, "reason") != "budget_exhausted" {
		t.Fatalf("p1 after its finish: %d %s", a.status, a.body)
	}
	evs := readKeyed(t, c, has(map[string]string{"r2": events.TypeRequestRejected, "r3": events.TypeRequestStarted}))
	if rej := find(t, evs, events.TypeRequestRejected, "r2"); rej.ev.Payload.(events.RequestRejected).Reason != "budget_exhausted" {
		t.Fatalf("rejected: %+v", rej.ev.Payload)
	}
}

// TestFinishNamesAdmitTimeFunderHTTP: p is moved from org1 to org2 while its request is open;
// the finish still names (and is keyed by) org1, which holds the request's hold, and a new
// request is org2's.
func TestFinishNamesAdmitTimeFunderHTTP(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, bal("org1", "enterprise", 1_000_000), bal("org2", "enterprise", 1_000_000), fundedBal("p", "enterprise", "org1"))
	s := start(t, testConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 3 })
	if a := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r1", "p")); a.status != 200 || answerField(t, a, "funding_account_id") != "org1" {
		t.Fatalf("admit: %d %s", a.status, a.body)
	}
	seed(t, c, fundedBal("p", "enterprise", "org2"))
	waitFor(t, s, "the move to org2", func(tb *decide.Table) bool {
		snap, _ := tb.Account("p")
		return snap.FundingAccountID == "org2"
	})
	f := post(t, s.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "r1", Status: "succeeded",
		Usage: events.Units{TokensIn: 1000, TokensOut: 1000}})
	if f.status != 200 {
		t.Fatalf("finish: %d %s", f.status, f.body)
	}
	// A repeat of the admit replays the first answer (org1).
	if a := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r1", "p")); a.status != 200 || answerField(t, a, "funding_account_id") != "org1" {
		t.Fatalf("admit repeat: %d %s", a.status, a.body)
	}
	if a := post(t, s.url+api.PathAdmit, testSecret, code1kReq("r2", "p")); a.status != 200 || answerField(t, a, "funding_account_id") != "org2" {
		t.Fatalf("new admit: %d %s", a.status, a.body)
	}
	evs := readKeyed(t, c, has(map[string]string{"r1": events.TypeRequestFinished, "r2": events.TypeRequestStarted}))
	fin := find(t, evs, events.TypeRequestFinished, "r1")
	if p := fin.ev.Payload.(events.RequestFinished); p.FundingAccountID != "org1" || fin.key != "org1" {
		t.Fatalf("finished: key %q %+v", fin.key, p)
	}
	if st := find(t, evs, events.TypeRequestStarted, "r2"); st.key != "org2" || st.ev.Payload.(events.RequestStarted).FundingAccountID != "org2" {
		t.Fatalf("second start: key %q %+v", st.key, st.ev.Payload)
	}
	s.mu.Lock()
	org1, _ := s.table.Account("org1")
	org2, _ := s.table.Account("org2")
	s.mu.Unlock()
	if org1.PendingAvailMicros != -7_500 || org2.PendingAvailMicros != -7_500 {
		t.Fatalf("org1 %+v, org2 %+v", org1, org2)
	}
}

// TestFundedAtTwoAdmittersHTTP: two admitters (log-order confirmation on). A admits p1's
// 7,500 µ on the organization's 10,000 µ; B, which learns of it only from the events log,
// denies p1 budget_exhausted (A's open estimate counts against p1's 10,000 µ budget) and p2
// insufficient_credits (A's hold is on the organization), then settles p1's finish from the
// log, naming the organization; A frees the request when it reads that finish.
func TestFundedAtTwoAdmittersHTTP(t *testing.T) {
	c := kafkatest.Start(t)
	now := time.Now().UTC()
	org := bal("org", "enterprise", 10_000)
	org.Projects = []events.ProjectSpend{{ProjectID: "p1", BudgetMicros: 10_000,
		PeriodStart: time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)}}
	seed(t, c, org, fundedBal("p1", "enterprise", "org"), fundedBal("p2", "enterprise", "org"))
	var inst []*running
	for i := range 2 {
		cfg := testConfig(t, c)
		cfg.Instances = 2
		cfg.InstanceID = fmt.Sprint("org-", i)
		inst = append(inst, start(t, cfg))
		waitFor(t, inst[i], "balances", func(tb *decide.Table) bool { return tb.Accounts() == 3 })
	}
	a, b := inst[0], inst[1]
	if ad := post(t, a.url+api.PathAdmit, testSecret, code1kReq("r1", "p1")); ad.status != 200 {
		t.Fatalf("p1 at A (confirmed in log order on the org): %d %s", ad.status, ad.body)
	}
	waitFor(t, b, "A's hold on the org", func(tb *decide.Table) bool {
		o, _ := tb.Account("org")
		p, _ := tb.Account("p1")
		return o.PendingAvailMicros == -7_500 && p.BudgetReservedMicros == 7_500
	})
	if ad := post(t, b.url+api.PathAdmit, testSecret, code1kReq("r2", "p1")); ad.status != 429 || answerField(t, ad, "reason") != "budget_exhausted" {
		t.Fatalf("p1 at B: %d %s", ad.status, ad.body)
	}
	if ad := post(t, b.url+api.PathAdmit, testSecret, code1kReq("r3", "p2")); ad.status != 429 || answerField(t, ad, "reason") != api.ReasonInsufficientCredits {
		t.Fatalf("p2 at B: %d %s", ad.status, ad.body)
	}
	f := post(t, b.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "r1", Status: "succeeded", Usage: usage9000})
	var fr api.FinishResponse
	f.decode(t, &fr)
	if f.status != 200 || fr.CreditsMicros != 9_000 || fr.OverageMicros != 0 { // the hold + 1,500 of the org's 2,500
		t.Fatalf("finish at B: %d %s", f.status, f.body)
	}
	evs := readKeyed(t, c, has(map[string]string{"r1": events.TypeRequestFinished}))
	fin := find(t, evs, events.TypeRequestFinished, "r1")
	if p := fin.ev.Payload.(events.RequestFinished); fin.key != "org" || p.FundingAccountID != "org" || p.AccountID != "p1" {
		t.Fatalf("finished: key %q %+v", fin.key, p)
	}
	for _, s := range inst {
		waitFor(t, s, "the finish", func(tb *decide.Table) bool {
			p, _ := tb.Account("p1")
			o, _ := tb.Account("org")
			return tb.OpenRequests() == 0 && p.BudgetReservedMicros == 0 && o.PendingAvailMicros == -9_000
		})
	}
}

// TestFundedHoldExpiryHTTP: when a funded request's hold expires, its estimate stops counting
// against the project's budget, at the admitter that admitted it and at one that read its
// start from the log.
func TestFundedHoldExpiryHTTP(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, bal("org", "enterprise", 1_000_000), fundedBal("p1", "enterprise", "org"))
	var inst []*running
	for i := range 2 {
		cfg := testConfig(t, c)
		cfg.Instances = 2
		cfg.InstanceID = fmt.Sprint("exp-", i)
		inst = append(inst, start(t, cfg))
		waitFor(t, inst[i], "balances", func(tb *decide.Table) bool { return tb.Accounts() == 2 })
	}
	if ad := post(t, inst[0].url+api.PathAdmit, testSecret, code1kReq("r1", "p1")); ad.status != 200 {
		t.Fatalf("admit: %d %s", ad.status, ad.body)
	}
	reserved := func(tb *decide.Table) int64 { p, _ := tb.Account("p1"); return p.BudgetReservedMicros }
	for _, s := range inst {
		waitFor(t, s, "the reservation", func(tb *decide.Table) bool { return reserved(tb) == 7_500 })
	}
	for i, s := range inst {
		s.expire(time.Now().Add(30 * 24 * time.Hour))
		s.mu.Lock()
		r := reserved(s.table)
		s.mu.Unlock()
		if r != 0 {
			t.Fatalf("instance %d: %d µ still reserved after the hold expired", i, r)
		}
	}
}
