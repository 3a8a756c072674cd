// Package e2e drives the whole pipeline through its public APIs: the ledger's HTTP API, the
// admitter's Go client, and ClickHouse through clickhouse-go. It runs on the embedded broker
// by default and on real Kafka when KAFKA_BROKERS is set, always on the real ClickHouse
// engine (the embedded endpoint).
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/tallyctl/internal/waitfor"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/tallyhq/tally/services/admitter"
	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/sink"
	"github.com/tallyhq/tally/services/tallyctl/internal/journal"
	"github.com/tallyhq/tally/services/tallyctl/stack"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// startStack starts the pipeline on a fresh topic prefix and a fresh ClickHouse database.
func startStack(t *testing.T, detectIntervalMs int) (*stack.Stack, clickhouse.Conn) {
	t.Helper()
	return startStackWith(t, stack.Config{DetectIntervalMs: detectIntervalMs})
}

// startStackTuned starts the stack with adjusted service settings; the detector runs only
// when the test calls it.
func startStackTuned(t *testing.T, tune func(*admitter.Config, *ledger.Config, *sink.Config)) (*stack.Stack, clickhouse.Conn) {
	t.Helper()
	return startStackWith(t, stack.Config{DetectIntervalMs: 86_400_000, Tune: tune})
}

func startStackWith(t *testing.T, cfg stack.Config) (*stack.Stack, clickhouse.Conn) {
	t.Helper()
	kc := kafkatest.Start(t)
	ch := chembedtest.Start(t)
	db := chembedtest.NewDatabase(t, ch)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("TALLY_E2E_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	cfg.Brokers, cfg.TopicPrefix, cfg.Partitions = kc.Brokers, kc.Prefix, kafkatest.Partitions
	cfg.ClickHouseAddr, cfg.ClickHouseDatabase, cfg.Logger = ch.Addr(), db, logger
	st, err := stack.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start stack: %v", err)
	}
	t.Cleanup(st.Close)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch.Addr()}, Protocol: clickhouse.HTTP,
		Auth: clickhouse.Auth{Database: db}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return st, conn
}

// admin calls the ledger's admin API and decodes the JSON answer into out.
func admin(t *testing.T, st *stack.Stack, method, path string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, st.LedgerURL+path, rd)
	req.Header.Set("Authorization", "Bearer "+st.AdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

type accountView struct {
	AvailableMicros int64 `json:"available_micros"`
	HeldMicros      int64 `json:"held_micros"`
	OverageMicros   int64 `json:"overage_micros"`
}

func TestGrantAdmitFinishReconcile(t *testing.T) {
	st, conn := startStack(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const acct = "acct_e2e"
	const grantMicros = 50_000_000

	// 1. Finance grants 50 credits.
	var accepted struct {
		EventID string `json:"event_id"`
	}
	if code := admin(t, st, "POST", "/v1/accounts/"+acct+"/grants",
		map[string]any{"grant_id": "g-e2e-1", "amount_micros": grantMicros, "source": "purchase", "priority": 100}, &accepted); code != 202 {
		t.Fatalf("grant: status %d", code)
	}
	// The admitter sees the balance once the ledger has folded the grant.
	cl, err := client.New(client.Config{BaseURL: st.AdmitterURL, APIKey: st.APIKey})
	if err != nil {
		t.Fatal(err)
	}

	// 2. Admit a 10 s 1080p video: estimate 10 × 0.1 credit × 4 = 4 credits, more than the free
	// tier's 2-credit allowance, so it is split: the allowance covers 2 credits and a 2,000,000 µ
	// credit hold the rest.
	// A denial is an answer too (idempotent by request id), so each attempt uses a new id.
	var adm *api.AdmitResponse
	attempt := 0
	rid := ""
	waitfor.Eventually(t, "admit once the grant reached the admitter", 30*time.Second, func() error {
		attempt++
		rid = fmt.Sprintf("req-e2e-1-%d", attempt)
		adm, err = cl.Admit(ctx, api.AdmitRequest{RequestID: rid, AccountID: acct, Endpoint: "sora.video",
			Estimate: events.Units{VideoSeconds: 10, Resolution: "1080p"}})
		var denied *client.DeniedError
		if errors.As(err, &denied) && denied.Reason == client.ReasonInsufficientCredits {
			return err // the balance has not arrived yet
		}
		if err != nil {
			t.Fatalf("admit: %v", err)
		}
		return nil
	})
	if !adm.Allowed || adm.Funding != events.FundingSplit || adm.AllowanceMicros != 2_000_000 || adm.HoldMicros != 2_000_000 ||
		adm.EstimateMicros != 4_000_000 {
		t.Fatalf("admit answer: %+v", adm)
	}

	// 3. Finish with 8 s of video: 3.2 credits charged, 2 to the allowance and 1.2 to the hold;
	// 0.8 of the hold released.
	fin, err := cl.Finish(ctx, api.FinishRequest{RequestID: rid, Status: events.StatusSucceeded,
		Usage: events.Units{VideoSeconds: 8, Resolution: "1080p"}, DurationMs: 41_500})
	if err != nil {
		t.Fatalf("finish: %v", err)
	}
	if fin.CostMicros != 3_200_000 || fin.ChargedMicros != 3_200_000 || fin.AllowanceMicros != 2_000_000 || fin.CreditsMicros != 1_200_000 ||
		fin.ReleasedMicros != 800_000 || fin.OverageMicros != 0 {
		t.Fatalf("finish answer: %+v", fin)
	}
	// A repeat is idempotent: same answer.
	again, err := cl.Finish(ctx, api.FinishRequest{RequestID: rid, Status: events.StatusSucceeded,
		Usage: events.Units{VideoSeconds: 8, Resolution: "1080p"}, DurationMs: 41_500})
	if err != nil || *again != *fin {
		t.Fatalf("repeated finish: %+v, %v; want %+v", again, err, fin)
	}

	// An account with no credits and a request above its allowance is denied with a reason.
	_, err = cl.Admit(ctx, api.AdmitRequest{RequestID: "req-e2e-poor", AccountID: "acct_poor", Endpoint: "sora.video",
		Estimate: events.Units{VideoSeconds: 30, Resolution: "1080p"}})
	var denied *client.DeniedError
	if !errors.As(err, &denied) || denied.Reason != client.ReasonInsufficientCredits || denied.RetryAfter <= 0 {
		t.Fatalf("poor account: want insufficient_credits with a retry-after, got %v", err)
	}

	// 4. The ledger's balance reflects the exact charge.
	want := accountView{AvailableMicros: grantMicros - 1_200_000}
	waitfor.Eventually(t, "ledger balance", 30*time.Second, func() error {
		var v accountView
		if code := admin(t, st, "GET", "/v1/accounts/"+acct, nil, &v); code != 200 {
			return fmt.Errorf("status %d", code)
		}
		if v != want {
			return fmt.Errorf("got %+v, want %+v", v, want)
		}
		return nil
	})

	// 5. ClickHouse has the event rows and the journal, queried with clickhouse-go.
	waitfor.Eventually(t, "rows in ClickHouse", 60*time.Second, func() error {
		var n uint64
		if err := conn.QueryRow(ctx, `SELECT count() FROM usage_events WHERE request_id = {rid:String}
			AND type IN ('tally.request.started.v1', 'tally.request.finished.v1')`,
			clickhouse.Named("rid", rid)).Scan(&n); err != nil {
			return err
		}
		if n != 2 {
			return fmt.Errorf("%d request rows, want 2 (started, finished)", n)
		}
		var avail int64
		if err := conn.QueryRow(ctx, `SELECT sum(amount_micros) FROM ledger_entries FINAL
			WHERE account_id = {a:String} AND ledger_account = 'customer.available'`,
			clickhouse.Named("a", acct)).Scan(&avail); err != nil {
			return err
		}
		if avail != want.AvailableMicros {
			return fmt.Errorf("journal sum of customer.available = %d, want %d", avail, want.AvailableMicros)
		}
		return nil
	})
	var cost int64
	if err := conn.QueryRow(ctx, `SELECT cost_micros FROM usage_events WHERE request_id = {rid:String}
		AND type = 'tally.request.finished.v1'`, clickhouse.Named("rid", rid)).Scan(&cost); err != nil || cost != 3_200_000 {
		t.Fatalf("finished row cost = %d, %v", cost, err)
	}

	// 6. Reconcile: a from-scratch replay of the log, the live ledger and ClickHouse agree.
	rep, err := finance.Replay(ctx, st.Brokers, st.Topics, st.FoldConfig, false, nil)
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	report, err := finance.Reconcile(ctx, rep, finance.HTTPLive(http.DefaultClient, st.LedgerURL, st.AdminToken),
		func(ctx context.Context) (map[string]finance.Balance, error) { return journal.Sums(ctx, conn) })
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if !report.OK() {
		t.Fatalf("reconcile differences: %+v", report.Differences)
	}
	found := false
	for _, b := range rep.Balances() {
		if b.AccountID == acct {
			found = b.AvailableMicros == want.AvailableMicros && b.HeldMicros == 0
		}
	}
	if !found {
		t.Fatalf("replay balances %+v lack %s at %d", rep.Balances(), acct, want.AvailableMicros)
	}
}
