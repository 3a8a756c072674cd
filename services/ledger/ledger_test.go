package ledger_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/engine"
	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/pricebook"
)

const adminToken = "admin-secret"

// t0 is near the wall clock: the API stamps its events with the wall clock, and the fold
// would (rightly) expire holds stamped far in the past once those events move the clock.
var t0 = time.Now().UTC().Truncate(time.Second)

func testConfig(c *kafkatest.Cluster) ledger.Config {
	cfg := ledger.DefaultConfig()
	cfg.Brokers = c.Brokers[0]
	cfg.TopicPrefix = c.Prefix
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.AdminKeys = "ops:" + httpx.HashSecret(adminToken)
	cfg.Group = c.Group("ledger")
	cfg.EnsureTopics = false
	cfg.RetryBackoffMs = 100
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

type running struct {
	svc    *ledger.Service
	cancel context.CancelFunc
	done   chan error
	base   string
}

func start(t *testing.T, cfg ledger.Config) *running {
	t.Helper()
	svc, err := ledger.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{svc: svc, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- svc.Run(ctx) }()
	actx, acancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer acancel()
	addr, err := svc.Addr(actx)
	if err != nil {
		t.Fatalf("ledger did not listen: %v", err)
	}
	r.base = "http://" + addr
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("ledger run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("ledger did not stop")
	}
}

func produce(t *testing.T, c *kafkatest.Cluster, evs ...events.Event) {
	t.Helper()
	w := kafkax.NewWriter(c.Brokers, c.Topics.Events, kafkax.DefaultWriterConfig)
	defer w.Close()
	msgs := make([]kafka.Message, 0, len(evs))
	for _, e := range evs {
		v, err := e.Encode()
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, kafka.Message{Key: []byte(e.Subject), Value: v})
	}
	for i := 0; i < len(msgs); i += 1000 {
		if err := w.WriteMessages(context.Background(), msgs[i:min(i+1000, len(msgs))]...); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}
}

func ev(t *testing.T, at time.Time, d events.Data) events.Event {
	t.Helper()
	e, err := events.New("test", at, d)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func call(t *testing.T, method, url, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// waitAccount polls GET /v1/accounts/{id} until ok(view) or the deadline.
func waitAccount(t *testing.T, base, id string, ok func(view.Account) bool) view.Account {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var v view.Account
	for time.Now().Before(deadline) {
		code, b := call(t, "GET", base+"/v1/accounts/"+id, adminToken, nil)
		if code == 200 {
			v = view.Account{} // decoding into the last answer would merge its maps and keep its pointers
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			if ok(v) {
				return v
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("account %s never reached the expected state; last %+v", id, v)
	return v
}

func TestGrantStartFinishOnKafka(t *testing.T) {
	c := kafkatest.Start(t)
	r := start(t, testConfig(c))
	// Grant through the API (published with acks=all, folded from the topic).
	code, b := call(t, "POST", r.base+"/v1/accounts/acme/grants", adminToken, map[string]any{"grant_id": "g1", "amount_micros": 5_000_000, "source": "purchase"})
	if code != 202 {
		t.Fatalf("grant: %d %s", code, b)
	}
	st := events.RequestStarted{RequestID: "r1", AccountID: "acme", Endpoint: "codex.responses", Tier: "free", Priority: events.PriorityStandard,
		Funding: events.FundingCredits, HoldMicros: 1_000_000, EstimateMicros: 1_000_000, HoldExpiresAt: t0.Add(5 * time.Minute), PriceBookVersion: "v"}
	fin := events.RequestFinished{RequestID: "r1", AccountID: "acme", Endpoint: "codex.responses", Status: events.StatusSucceeded, CostMicros: 1_234_567, PriceBookVersion: "v"}
	produce(t, c, ev(t, t0, st), ev(t, t0.Add(time.Second), fin))
	v := waitAccount(t, r.base, "acme", func(v view.Account) bool { return v.HeldMicros == 0 && v.AvailableMicros != 5_000_000 })
	if v.AvailableMicros != 5_000_000-1_234_567 || v.OverageMicros != 0 || len(v.Grants) != 1 || v.Grants[0].RemainingMicros != 5_000_000-1_234_567 {
		t.Fatalf("view %+v", v)
	}
	// The journal on Kafka balances and adds up to the balance.
	var journal []events.LedgerEntry
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		if journal, err = finance.ReadJournal(context.Background(), c.Brokers, c.Topics); err != nil {
			t.Fatal(err)
		}
		if len(journal) >= 7 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	sums := map[string]int64{}
	var avail int64
	for _, e := range journal {
		sums[e.TransactionID] += e.AmountMicros
		if e.LedgerAccount == events.LedgerAvailable {
			avail += e.AmountMicros
		}
	}
	for tx, s := range sums {
		if s != 0 {
			t.Errorf("transaction %s sums to %d", tx, s)
		}
	}
	if len(sums) != 3 || avail != v.AvailableMicros {
		t.Fatalf("journal: %d transactions, available lines %d, want 3 and %d: %+v", len(sums), avail, v.AvailableMicros, journal)
	}
	// The entries API pages the same lines.
	code, b = call(t, "GET", r.base+"/v1/accounts/acme/entries?limit=4", adminToken, nil)
	var page view.Entries
	if code != 200 || json.Unmarshal(b, &page) != nil || len(page.Entries) != 4 || page.NextCursor == "" {
		t.Fatalf("entries page 1: %d %s", code, b)
	}
	code, b = call(t, "GET", r.base+"/v1/accounts/acme/entries?limit=4&cursor="+page.NextCursor, adminToken, nil)
	var page2 view.Entries
	if code != 200 || json.Unmarshal(b, &page2) != nil || len(page2.Entries) != 3 || page2.NextCursor != "" {
		t.Fatalf("entries page 2: %d %s", code, b)
	}
	// Line for line the journal's, ids included (the cache derives them again).
	want := map[string]string{}
	for _, e := range journal {
		j, _ := json.Marshal(e)
		want[e.EntryID] = string(j)
	}
	for _, e := range append(page.Entries, page2.Entries...) {
		if j, _ := json.Marshal(e.LedgerEntry); want[e.EntryID] != string(j) {
			t.Fatalf("entries API line %s, journal %s", j, want[e.EntryID])
		}
		delete(want, e.EntryID)
	}
	if len(want) != 0 {
		t.Fatalf("journal lines missing from the entries API: %v", want)
	}
	// The balance reached the compacted balances topic with the events-topic position.
	var bu events.BalanceUpdated
	found := false
	for time.Now().Before(deadline) && !found {
		_ = readTopic(t, c.Brokers, c.Topics.Balances, func(e events.Event) {
			if x, ok := e.Payload.(events.BalanceUpdated); ok && x.AccountID == "acme" {
				bu, found = x, x.HeldMicros == 0 && x.AvailableMicros == v.AvailableMicros
			}
		})
	}
	if !found || bu.Offset != v.Position.Offset || bu.Partition != v.Position.Partition {
		t.Fatalf("balance.updated %+v, view position %+v", bu, v.Position)
	}
	// Readiness and metrics.
	if code, _ := call(t, "GET", r.base+"/readyz", "", nil); code != 200 {
		t.Fatalf("readyz %d", code)
	}
	code, b = call(t, "GET", r.base+"/metrics", "", nil)
	if code != 200 || !bytes.Contains(b, []byte("tally_ledger_events_folded_total 3")) {
		t.Fatalf("metrics: %d %s", code, b)
	}
}

func readTopic(t *testing.T, brokers []string, topic string, fn func(events.Event)) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return engineReadAll(ctx, brokers, topic, func(m kafka.Message) error {
		e, err := events.Decode(m.Value)
		if err != nil {
			t.Fatalf("decode %s: %v", topic, err)
		}
		fn(e)
		return nil
	})
}

func TestAPIValidation(t *testing.T) {
	c := kafkatest.Start(t)
	r := start(t, testConfig(c))
	cases := []struct {
		method, path, token string
		body                any
		status              int
		code                string
	}{
		{"GET", "/v1/accounts/acme", "", nil, 401, httpx.CodeUnauthenticated},
		{"GET", "/v1/accounts/acme", "wrong", nil, 403, httpx.CodeForbidden},
		{"GET", "/v1/accounts/nobody", adminToken, nil, 404, httpx.CodeNotFound},
		{"POST", "/v1/accounts/acme/grants", adminToken, map[string]any{"amount_micros": -5}, 400, httpx.CodeValidation},
		{"POST", "/v1/accounts/acme/grants", adminToken, map[string]any{"amount_micros": 5, "bogus": 1}, 400, httpx.CodeInvalidJSON},
		{"POST", "/v1/accounts/acme/adjustments", adminToken, map[string]any{"amount_micros": 0, "reason": "x"}, 400, httpx.CodeValidation},
		{"PUT", "/v1/accounts/acme", adminToken, map[string]any{"tier": "platinum", "priority": "standard"}, 400, httpx.CodeValidation},
		{"PUT", "/v1/accounts/acme", adminToken, map[string]any{"tier": "pro", "priority": "urgent"}, 400, httpx.CodeValidation},
		{"GET", "/v1/accounts/acme/entries?limit=0", adminToken, nil, 400, httpx.CodeValidation},
		{"GET", "/v1/accounts/acme/entries?from=yesterday", adminToken, nil, 400, httpx.CodeValidation},
		{"DELETE", "/v1/accounts/acme", adminToken, nil, 405, httpx.CodeMethodNotAllowed},
		{"GET", "/v2/nothing", adminToken, nil, 404, httpx.CodeNotFound},
		{"PUT", "/v1/accounts/acme", adminToken, map[string]any{"tier": "pro", "priority": "critical"}, 202, ""},
		{"POST", "/v1/accounts/acme/adjustments", adminToken, map[string]any{"amount_micros": -7, "reason": "correction"}, 202, ""},
	}
	for _, tc := range cases {
		code, b := call(t, tc.method, r.base+tc.path, tc.token, tc.body)
		if code != tc.status {
			t.Errorf("%s %s: status %d, want %d (%s)", tc.method, tc.path, code, tc.status, b)
			continue
		}
		if tc.code != "" {
			var e struct {
				Error httpx.Error `json:"error"`
			}
			if json.Unmarshal(b, &e) != nil || e.Error.Code != tc.code {
				t.Errorf("%s %s: body %s, want code %s", tc.method, tc.path, b, tc.code)
			}
		}
	}
	v := waitAccount(t, r.base, "acme", func(v view.Account) bool { return v.Tier == "pro" && v.OverageMicros == 7 })
	if v.Priority != "critical" || v.AvailableMicros != 0 {
		t.Fatalf("view %+v", v)
	}
}

func TestDeadLetter(t *testing.T) {
	c := kafkatest.Start(t)
	r := start(t, testConfig(c))
	w := kafkax.NewWriter(c.Brokers, c.Topics.Events, kafkax.DefaultWriterConfig)
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("acme"), Value: []byte(`{"not":"an event"}`)}); err != nil {
		t.Fatal(err)
	}
	g := events.CreditsGranted{GrantID: "g1", AccountID: "acme", AmountMicros: 10, Source: events.GrantPurchase}
	produce(t, c, ev(t, t0, g))
	waitAccount(t, r.base, "acme", func(v view.Account) bool { return v.AvailableMicros == 10 })
	var reason string
	deadline := time.Now().Add(30 * time.Second)
	for reason == "" && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = engineReadAll(ctx, c.Brokers, c.Topics.DeadLetter, func(m kafka.Message) error {
			for _, h := range m.Headers {
				if h.Key == kafkax.HeaderDLQReason {
					reason = string(h.Value)
				}
			}
			return nil
		})
		cancel()
	}
	if reason == "" {
		t.Fatal("undecodable message was not dead-lettered with a reason")
	}
}

// replayBalances replays the events topic from scratch through the fold.
func replayBalances(t *testing.T, c *kafkatest.Cluster) *finance.Replayed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cfg := ledger.DefaultConfig()
	rep, err := finance.Replay(ctx, c.Brokers, c.Topics, cfg.FoldConfig(pricebook.Default()), true, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

var engineReadAll = engine.ReadAll

var _ = fold.AnomalyDuplicate
var _ = fmt.Sprint

func testConfig2(c *kafkatest.Cluster) ledger.Config { return testConfig(c) }

// startB runs a service for a benchmark and stops it at cleanup.
func startB(b *testing.B, cfg ledger.Config) *ledger.Service {
	b.Helper()
	svc, err := ledger.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	actx, acancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer acancel()
	if _, err := svc.Addr(actx); err != nil {
		b.Fatal(err)
	}
	return svc
}

// TestLateCopiesAcrossRestart: a copy of an applied event produced after a restart (the
// dedupe memory was persisted with the account and restored) is not applied again, and an
// event older than the dedupe window is not applied but dead-lettered with the reason.
func TestLateCopiesAcrossRestart(t *testing.T) {
	c := kafkatest.Start(t)
	cfg := testConfig(c)
	r := start(t, cfg)
	g1 := ev(t, t0, events.CreditsGranted{GrantID: "g1", AccountID: "acme", AmountMicros: 10, Source: events.GrantPurchase})
	adj := ev(t, t0, events.CreditsAdjusted{AdjustmentID: "x1", AccountID: "acme", AmountMicros: 3, Reason: "fix"})
	produce(t, c, g1, adj)
	waitAccount(t, r.base, "acme", func(v view.Account) bool { return v.AvailableMicros == 13 })
	r.stop(t)
	r = start(t, cfg)
	old := ev(t, t0.Add(-25*time.Hour), events.CreditsGranted{GrantID: "g-old", AccountID: "acme", AmountMicros: 1000, Source: events.GrantPurchase})
	adj2 := ev(t, t0.Add(time.Second), events.CreditsAdjusted{AdjustmentID: "x1", AccountID: "acme", AmountMicros: 3, Reason: "fix"}) // same adjustment id, new event
	g3 := ev(t, t0.Add(2*time.Second), events.CreditsGranted{GrantID: "g3", AccountID: "acme", AmountMicros: 5, Source: events.GrantPurchase})
	produce(t, c, g1, adj, old, adj2, g3)
	// The ledger's clock ticks may move the watermark past g3's time: wait for g3 itself.
	v := waitAccount(t, r.base, "acme", func(v view.Account) bool { return hasGrant(v, "g3") })
	if v.AvailableMicros != 18 {
		t.Fatalf("available %d after the copies, want 18 (13 + g3)", v.AvailableMicros)
	}
	reason := deadLetterReason(t, c, old.ID)
	if !bytes.HasPrefix([]byte(reason), []byte(fold.AnomalyTooLate+": event "+old.ID)) {
		t.Fatalf("the too-late event was not dead-lettered with its reason: %q", reason)
	}
	t.Logf("reason: %s", reason)
}

// TestFutureTimeDeadLettered: an event stamped a year ahead of its Kafka record timestamp is
// dead-lettered with the reason and never applied; it does not move the ledger's clock (the
// next event is applied, not refused as too late), and a replay of the log agrees.
func TestFutureTimeDeadLettered(t *testing.T) {
	c := kafkatest.Start(t)
	r := start(t, testConfig(c))
	now := time.Now().UTC()
	g1 := ev(t, now, events.CreditsGranted{GrantID: "g1", AccountID: "acme", AmountMicros: 10, Source: events.GrantPurchase})
	far := ev(t, now.Add(365*24*time.Hour), events.CreditsGranted{GrantID: "g-far", AccountID: "acme", AmountMicros: 1000, Source: events.GrantPurchase})
	g2 := ev(t, now.Add(time.Second), events.CreditsGranted{GrantID: "g2", AccountID: "acme", AmountMicros: 5, Source: events.GrantPurchase})
	produce(t, c, g1, far, g2)
	v := waitAccount(t, r.base, "acme", func(v view.Account) bool { return hasGrant(v, "g2") })
	if v.AvailableMicros != 15 {
		t.Fatalf("available %d, want 15 (g1 + g2, not the far-future grant)", v.AvailableMicros)
	}
	reason := deadLetterReason(t, c, far.ID)
	if !strings.HasPrefix(reason, fold.AnomalyFutureTime+": event "+far.ID) {
		t.Fatalf("the far-future event was not dead-lettered with its reason: %q", reason)
	}
	rep := replayBalances(t, c)
	var got int64
	for _, st := range rep.States {
		if a := st.Account("acme"); a != nil {
			got = a.AvailableMicros
		}
	}
	if got != 15 {
		t.Fatalf("replay: available %d, want 15", got)
	}
}

// deadLetterReason waits up to 30 s for the event with this id on the dead-letter topic and
// returns its reason header ("" if it never came).
func deadLetterReason(t *testing.T, c *kafkatest.Cluster, eventID string) string {
	t.Helper()
	var reason string
	deadline := time.Now().Add(30 * time.Second)
	for reason == "" && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = engineReadAll(ctx, c.Brokers, c.Topics.DeadLetter, func(m kafka.Message) error {
			if e, err := events.Decode(m.Value); err == nil && e.ID == eventID {
				for _, h := range m.Headers {
					if h.Key == kafkax.HeaderDLQReason {
						reason = string(h.Value)
					}
				}
			}
			return nil
		})
		cancel()
	}
	return reason
}

func hasGrant(v view.Account, id string) bool {
	for _, g := range v.Grants {
		if g.GrantID == id {
			return true
		}
	}
	return false
}
