package admitter

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

func codeReq(id, acct string) api.AdmitRequest {
	return api.AdmitRequest{RequestID: id, AccountID: acct, Endpoint: "codex.responses",
		Estimate: events.Units{TokensIn: 1000, TokensOut: 1000}} // 7,500 µ
}

func TestAdmitFinishHappyPath(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, bal("ent", "enterprise", 10_000_000), bal("free1", "free", 0))
	s := start(t, testConfig(t, c))
	waitFor(t, s, "balances", func(tb *decide.Table) bool { return tb.Accounts() == 2 })

	// Credits: enterprise has no allowance; the hold is the estimate, 7,500 µ.
	a := post(t, s.url+api.PathAdmit, testSecret, codeReq("req-1", "ent"))
	var ar api.AdmitResponse
	a.decode(t, &ar)
	if a.status != 200 || !ar.Allowed || ar.Funding != "credits" || ar.HoldMicros != 7_500 || ar.ReservedMicros != 7_500 ||
		ar.EstimateMicros != 7_500 || ar.Remaining.AvailableMicros != 9_992_500 || ar.HoldExpiresAt == nil || ar.Tier != "enterprise" {
		t.Fatalf("admit: %d %s", a.status, a.body)
	}
	// Actual: 2k in (3,000) + 1k out (6,000) = 9,000: 7,500 from the hold, 1,500 from available.
	f := post(t, s.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "req-1", Status: "succeeded",
		Usage: events.Units{TokensIn: 2000, TokensOut: 1000}, DurationMs: 1200})
	var fr api.FinishResponse
	f.decode(t, &fr)
	if f.status != 200 || fr.CostMicros != 9_000 || fr.ChargedMicros != 9_000 || fr.ReleasedMicros != 0 || fr.OverageMicros != 0 {
		t.Fatalf("finish: %d %s", f.status, f.body)
	}
	// Allowance: free's 5h window (2,000,000 µ) funds a 480p 10 s video (1,000,000 µ).
	v := post(t, s.url+api.PathAdmit, testSecret, api.AdmitRequest{RequestID: "req-2", AccountID: "free1",
		Endpoint: "sora.video", Estimate: events.Units{VideoSeconds: 10, Resolution: "480p"}})
	var vr api.AdmitResponse
	v.decode(t, &vr)
	if v.status != 200 || vr.Funding != "allowance" || vr.AllowanceMicros != 1_000_000 || vr.HoldMicros != 0 ||
		len(vr.Remaining.Allowance) != 2 || vr.Remaining.Allowance[0].RemainingMicros != 1_000_000 {
		t.Fatalf("allowance admit: %d %s", v.status, v.body)
	}
	f = post(t, s.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: "req-2", Status: "succeeded",
		Usage: events.Units{VideoSeconds: 6, Resolution: "480p"}})
	f.decode(t, &fr)
	if f.status != 200 || fr.Funding != "allowance" || fr.CostMicros != 600_000 || fr.ReleasedMicros != 400_000 {
		t.Fatalf("allowance finish: %d %s", f.status, f.body)
	}

	evs := readEvents(t, c, func(e []events.Event) bool { return count(e, events.TypeRequestFinished, "") == 2 })
	for _, e := range evs {
		switch p := e.Payload.(type) {
		case events.RequestStarted:
			if p.RequestID == "req-1" && (p.HoldMicros != 7_500 || p.Funding != "credits" || p.KeyID != "k1" ||
				p.ClientAddr != "127.0.0.1" || p.PriceBookVersion != "2026-11-01" || !strings.HasPrefix(e.Source, "admitter/")) {
				t.Fatalf("started event: %+v", p)
			}
			if p.RequestID == "req-2" && (p.AllowanceMicros != 1_000_000 || p.Funding != "allowance") {
				t.Fatalf("started event: %+v", p)
			}
		case events.RequestFinished:
			if p.RequestID == "req-1" && (p.CostMicros != 9_000 || p.DurationMs != 1200 || p.KeyID != "k1") {
				t.Fatalf("finished event: %+v", p)
			}
		}
	}
	if n := count(evs, events.TypeRequestStarted, ""); n != 2 {
		t.Fatalf("started events: %d", n)
	}
	// The local balance keeps the unfolded changes: hold 7,500 then settlement net 9,000.
	s.mu.Lock()
	snap, _ := s.table.Account("ent")
	s.mu.Unlock()
	if snap.AvailableMicros+snap.PendingAvailMicros != 10_000_000-9_000 || snap.Pending != 2 {
		t.Fatalf("local view: %+v", snap)
	}
	// The ledger folds both (its balance.updated names the finish's offset): nothing pending.
	finPart, finOff := s.positionOf(t, evs, "req-1")
	b := bal("ent", "enterprise", 9_991_000)
	b.Partition, b.Offset = finPart, finOff
	seed(t, c, b)
	waitFor(t, s, "fold", func(tb *decide.Table) bool {
		sn, _ := tb.Account("ent")
		return sn.Pending == 0 && sn.PendingAvailMicros == 0 && sn.AvailableMicros == 9_991_000
	})
}

// positionOf finds the partition and offset of a request's request.finished event among
// events read by readEvents.
func (s *running) positionOf(t *testing.T, evs []events.Event, requestID string) (int32, int64) {
	t.Helper()
	for _, e := range evs {
		if f, ok := e.Payload.(events.RequestFinished); ok && f.RequestID == requestID {
			if pos, ok := positions.Load(e.ID); ok {
				p := pos.([2]int64)
				return int32(p[0]), p[1]
			}
		}
	}
	t.Fatalf("no finished event for %s", requestID)
	return 0, 0
}

func TestDenialReasons(t *testing.T) {
	c := kafkatest.Start(t)
	susp := bal("susp", "wide", 1e9)
	susp.Suspended = true
	seed(t, c, susp, bal("blocked", "wide", 1e9), bal("shed", "wide", 1e9), bal("conc", "conc3", 1e9),
		bal("rate", "tiny", 1e9), bal("poor", "enterprise", 1_000),
		events.LimitsAdjusted{Scope: events.ScopeAccount, AccountID: "blocked", FactorPermille: 0, Reason: "abuse.block"},
		events.LimitsAdjusted{Scope: events.ScopeEndpoint, Endpoint: "sora.video", Priority: "batch", FactorPermille: 0, Reason: "overload"})
	s := start(t, testConfig(t, c))
	video := func(id, acct, prio string) api.AdmitRequest {
		return api.AdmitRequest{RequestID: id, AccountID: acct, Endpoint: "sora.video", Priority: prio,
			Estimate: events.Units{VideoSeconds: 1, Resolution: "480p"}}
	}
	check := func(r api.AdmitRequest, reason string) api.AdmitResponse {
		t.Helper()
		a := post(t, s.url+api.PathAdmit, testSecret, r)
		var ar api.AdmitResponse
		a.decode(t, &ar)
		ra, _ := strconv.Atoi(a.header.Get("Retry-After"))
		if a.status != 429 || ar.Allowed || ar.Reason != reason || ar.RetryAfterMs <= 0 || ra < 1 {
			t.Fatalf("%s: want %s, got %d %s (Retry-After %q)", r.RequestID, reason, a.status, a.body, a.header.Get("Retry-After"))
		}
		return ar
	}
	check(video("d1", "susp", ""), api.ReasonSuspended)
	check(video("d2", "blocked", ""), api.ReasonBlocked)
	check(video("d3", "shed", "batch"), api.ReasonOverloaded)
	for i := 0; i < 3; i++ { // conc3: three in flight, the fourth waits
		if a := post(t, s.url+api.PathAdmit, testSecret, video(fmt.Sprint("c", i), "conc", "")); a.status != 200 {
			t.Fatalf("conc %d: %s", i, a.body)
		}
	}
	if ar := check(video("d4", "conc", ""), api.ReasonConcurrencyLimited); ar.Remaining.ConcurrencyLimit != 3 || ar.Remaining.InFlight != 3 {
		t.Fatalf("%+v", ar.Remaining)
	}
	// tiny: 60/min, burst 2 × 1.5 clean bonus = 3: the fourth within the same second is limited.
	for i := 0; i < 3; i++ {
		id := fmt.Sprint("r", i)
		if a := post(t, s.url+api.PathAdmit, testSecret, video(id, "rate", "")); a.status != 200 {
			t.Fatalf("rate %d: %s", i, a.body)
		}
		post(t, s.url+api.PathFinish, testSecret, api.FinishRequest{RequestID: id, Status: "succeeded"})
	}
	if ar := check(video("d5", "rate", ""), api.ReasonRateLimited); ar.RetryAfterMs > 1000 || ar.Remaining.Burst != 3 {
		t.Fatalf("%+v", ar)
	}
	ar := check(api.AdmitRequest{RequestID: "d6", AccountID: "poor", Endpoint: "codex.responses",
		Estimate: events.Units{TokensIn: 1000, TokensOut: 1000}}, api.ReasonInsufficientCredits)
	if ar.Remaining.AvailableMicros != 1_000 || ar.EstimateMicros != 7_500 {
		t.Fatalf("%+v", ar)
	}
	evs := readEvents(t, c, func(e []events.Event) bool { return count(e, events.TypeRequestRejected, "") >= 6 })
	want := map[string]string{"d1": api.ReasonSuspended, "d2": api.ReasonBlocked, "d3": api.ReasonOverloaded,
		"d4": api.ReasonConcurrencyLimited, "d5": api.ReasonRateLimited, "d6": api.ReasonInsufficientCredits}
	for _, e := range evs {
		if p, ok := e.Payload.(events.RequestRejected); ok {
			if want[p.RequestID] != p.Reason || p.RetryAfterMs <= 0 || p.KeyID != "k1" {
				t.Fatalf("rejected event %+v", p)
			}
			delete(want, p.RequestID)
		}
	}
	if len(want) != 0 {
		t.Fatalf("missing rejected events: %v", want)
	}
}

func TestIdempotentRepeats(t *testing.T) {
	c := kafkatest.Start(t)
	seed(t, c, bal("ent", "enterprise", 1e9))
	s := start(t, testConfig(t, c))
	// Concurrent repeats of one admit: one decision, one event, identical answers.
	var wg sync.WaitGroup
	bodies := make([]string, 8)
	for i := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := post(t, s.url+api.PathAdmit, testSecret, codeReq("idem-1", "ent"))
			bodies[i] = fmt.Sprint(a.status, string(a.body))
		}()
	}
	wg.Wait()
	for _, b := range bodies[1:] {
		if b != bodies[0] || !strings.HasPrefix(b, "200") {
			t.Fatalf("answers differ:\n%s\n%s", bodies[0], b)
		}
	}
	other := codeReq("idem-1", "ent")
	other.Estimate.TokensIn = 5
	if a := post(t, s.url+api.PathAdmit, testSecret, other); a.status != 409 || a.code(t) != api.CodeRequestIDReused {
		t.Fatalf("reuse: %d %s", a.status, a.body)
	}
	fin := api.FinishRequest{RequestID: "idem-1", Status: "succeeded", Usage: events.Units{TokensIn: 10}}
	f1 := post(t, s.url+api.PathFinish, testSecret, fin)
	f2 := post(t, s.url+api.PathFinish, testSecret, fin)
	if f1.status != 200 || string(f1.body) != string(f2.body) || f2.status != 200 {
		t.Fatalf("finish repeat: %s / %s", f1.body, f2.body)
	}
	// A repeat admit after finish still gets the first answer.
	if a := post(t, s.url+api.PathAdmit, testSecret, codeReq("idem-1", "ent")); fmt.Sprint(a.status, string(a.body)) != bodies[0] {
		t.Fatalf("admit after finish: %s", a.body)
	}
	// A marker request after everything (same account, same partition) bounds the read.
	post(t, s.url+api.PathAdmit, testSecret, codeReq("marker", "ent"))
	evs := readEvents(t, c, func(e []events.Event) bool { return count(e, events.TypeRequestStarted, "marker") == 1 })
	if n, m := count(evs, events.TypeRequestStarted, "idem-1"), count(evs, events.TypeRequestFinished, "idem-1"); n != 1 || m != 1 {
		t.Fatalf("idem-1: %d started, %d finished events; want 1 and 1", n, m)
	}
}

func TestInputErrors(t *testing.T) {
	c := kafkatest.Start(t)
	cfg := testConfig(t, c)
	cfg.BodyBytesMax = 512
	s := start(t, cfg)
	good := codeReq("x1", "acct")
	cases := []struct {
		name, path, key string
		body            any
		status          int
		code            string
	}{
		{"no key", api.PathAdmit, "", good, 401, "unauthenticated"},
		{"wrong key", api.PathAdmit, "nope", good, 403, "forbidden"},
		{"too large", api.PathAdmit, testSecret, `{"account_id":"` + strings.Repeat("a", 600) + `"}`, 413, "body_too_large"},
		{"unknown field", api.PathAdmit, testSecret, `{"account_id":"a","endpoint":"codex.responses","bogus":1}`, 400, "invalid_json"},
		{"bad type", api.PathAdmit, testSecret, `{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":"many"}}`, 400, "invalid_json"},
		{"out of range", api.PathAdmit, testSecret, `{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":-1}}`, 400, "validation_failed"},
		{"huge number", api.PathAdmit, testSecret, `{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":1e40}}`, 400, "invalid_json"},
		{"missing account", api.PathAdmit, testSecret, `{"endpoint":"codex.responses"}`, 400, "validation_failed"},
		{"bad priority", api.PathAdmit, testSecret, `{"account_id":"a","endpoint":"codex.responses","priority":"vip"}`, 400, "validation_failed"},
		{"unknown endpoint", api.PathAdmit, testSecret, `{"account_id":"a","endpoint":"dall-e"}`, 404, "not_found"},
		{"unknown model", api.PathAdmit, testSecret, `{"account_id":"a","endpoint":"codex.responses","model":"gpt-9"}`, 400, "validation_failed"},
		{"unknown resolution", api.PathAdmit, testSecret, `{"account_id":"a","endpoint":"sora.video","estimate":{"video_seconds":1,"resolution":"8k"}}`, 400, "validation_failed"},
		{"empty body", api.PathAdmit, testSecret, ``, 400, "invalid_json"},
		{"not an object", api.PathAdmit, testSecret, `[1,2]`, 400, "invalid_json"},
		{"trailing", api.PathAdmit, testSecret, `{"account_id":"a","endpoint":"codex.responses"} {}`, 400, "invalid_json"},
		{"finish unknown", api.PathFinish, testSecret, `{"request_id":"never","status":"succeeded","usage":{}}`, 404, api.CodeUnknownRequest},
		{"finish bad status", api.PathFinish, testSecret, `{"request_id":"x","status":"done","usage":{}}`, 400, "validation_failed"},
		{"finish bad duration", api.PathFinish, testSecret, `{"request_id":"x","status":"failed","usage":{},"duration_ms":-5}`, 400, "validation_failed"},
		{"no route", "/v2/admit", testSecret, good, 404, "not_found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := post(t, s.url+tc.path, tc.key, tc.body)
			if a.status != tc.status || a.code(t) != tc.code || a.header.Get("Content-Type") != "application/json" {
				t.Fatalf("got %d %s", a.status, a.body)
			}
		})
	}
	req, _ := http.NewRequest(http.MethodGet, s.url+api.PathAdmit, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 405 {
		t.Fatalf("GET admit: %v %v", resp, err)
	}
	resp.Body.Close()
	req, _ = http.NewRequest(http.MethodPost, s.url+api.PathAdmit, strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Authorization", "Bearer "+testSecret)
	resp, _ = http.DefaultClient.Do(req)
	if resp.StatusCode != 415 {
		t.Fatalf("text/plain: %d", resp.StatusCode)
	}
	resp.Body.Close()
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get(s.url + p)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", p, resp, err)
		}
		resp.Body.Close()
	}
}

func TestKafkaDownAnswers503ThenRecovers(t *testing.T) {
	c := kafkatest.Start(t)
	if c.Real {
		t.Skip("stopping the shared real broker would disturb other tests; the kfake run covers this")
	}
	seed(t, c, bal("ent", "enterprise", 1e9))
	cfg := testConfig(t, c)
	cfg.PublishTimeoutMs = 500
	s := start(t, cfg)
	if a := post(t, s.url+api.PathAdmit, testSecret, codeReq("up-1", "ent")); a.status != 200 {
		t.Fatalf("before: %s", a.body)
	}
	_, port, _ := net.SplitHostPort(c.Brokers[0])
	c.Fake.Close()
	a := post(t, s.url+api.PathAdmit, testSecret, codeReq("down-1", "ent"))
	if a.status != 503 || a.code(t) != "unavailable" {
		t.Fatalf("down: %d %s", a.status, a.body)
	}
	s.mu.Lock()
	open := s.table.OpenRequests()
	s.mu.Unlock()
	if open != 1 {
		t.Fatalf("a failed admit kept its reservation: %d open", open)
	}
	// The broker comes back on the same address; the admitter recovers by itself.
	p, _ := strconv.Atoi(port)
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(p), kfake.DefaultNumPartitions(kafkatest.Partitions))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := kafkax.EnsureTopics(ctx, c.Brokers, c.Topics.Specs(kafkatest.Partitions, 1)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		a = post(t, s.url+api.PathAdmit, testSecret, codeReq("down-1", "ent"))
		if a.status == 200 {
			break
		}
		if a.status != 503 || time.Now().After(deadline) {
			t.Fatalf("after recovery: %d %s", a.status, a.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
