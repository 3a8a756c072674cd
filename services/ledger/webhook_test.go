package ledger_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/webhook"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

func writeSecret(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "webhook.secret")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWebhookSettingsValidate(t *testing.T) {
	base := ledger.DefaultConfig()
	base.AdminKeys = "ops:" + httpx.HashSecret("x")
	good := writeSecret(t, strings.Repeat("s", 32)+"\n")
	short := writeSecret(t, strings.Repeat("s", 31)+"\n")
	for _, c := range []struct {
		name string
		mut  func(*ledger.Config)
		want string // "" = valid
	}{
		{"off", func(*ledger.Config) {}, ""},
		{"on", func(c *ledger.Config) { c.Webhook.URL, c.Webhook.SecretFile = "https://hooks.example/tally", good }, ""},
		{"no secret file", func(c *ledger.Config) { c.Webhook.URL = "https://hooks.example/tally" }, "LEDGER_WEBHOOK_SECRET_FILE"},
		{"missing secret file", func(c *ledger.Config) {
			c.Webhook.URL, c.Webhook.SecretFile = "https://hooks.example/tally", filepath.Join(t.TempDir(), "nope")
		}, "LEDGER_WEBHOOK_SECRET_FILE"},
		{"short secret", func(c *ledger.Config) { c.Webhook.URL, c.Webhook.SecretFile = "https://hooks.example/tally", short }, "at least 32"},
		{"bad url", func(c *ledger.Config) { c.Webhook.URL, c.Webhook.SecretFile = "hooks.example/tally", good }, "LEDGER_WEBHOOK_URL"},
		{"attempts", func(c *ledger.Config) { c.Webhook.AttemptsMax = 0 }, "LEDGER_WEBHOOK_ATTEMPTS_MAX"},
		{"backoff max below min", func(c *ledger.Config) { c.Webhook.BackoffMsMax = c.Webhook.BackoffMsMin - 1 }, "LEDGER_WEBHOOK_BACKOFF_MAX_MS"},
		{"timeout", func(c *ledger.Config) { c.Webhook.TimeoutMs = 99 }, "LEDGER_WEBHOOK_TIMEOUT_MS"},
		{"queue", func(c *ledger.Config) { c.Webhook.QueueMax = 0 }, "LEDGER_WEBHOOK_QUEUE_MAX"},
		{"in flight", func(c *ledger.Config) { c.Webhook.InFlightMax = 1025 }, "LEDGER_WEBHOOK_IN_FLIGHT_MAX"},
		{"dedupe", func(c *ledger.Config) { c.Webhook.DedupeMax = -1 }, "LEDGER_WEBHOOK_DEDUPE_MAX"},
		{"group", func(c *ledger.Config) { c.Webhook.Group = "" }, "LEDGER_WEBHOOK_GROUP"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			c.mut(&cfg)
			err := cfg.Validate()
			if c.want == "" && err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("error %v does not name %s", err, c.want)
			}
		})
	}
}

// TestLedgerRunsWebhooks: with LEDGER_WEBHOOK_URL set, the ledger process delivers what is on
// the notifications topic, signed with the secret file's secret, and counts it in its metrics.
func TestLedgerRunsWebhooks(t *testing.T) {
	c := kafkatest.Start(t)
	secret := strings.Repeat("k", 40)
	var mu sync.Mutex
	got := map[string]int{}
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify([]byte(secret), r.Header.Get(webhook.HeaderSignature), body, time.Now(), time.Minute); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		got[r.Header.Get(webhook.HeaderID)]++
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	defer rcv.Close()
	cfg := testConfig(c)
	cfg.Webhook.URL = rcv.URL + "/hook"
	cfg.Webhook.SecretFile = writeSecret(t, secret+"\n")
	cfg.Webhook.Group = c.Group("webhook")
	r := start(t, cfg)

	e := ev(t, t0, events.CreditsGranted{GrantID: "g-n", AccountID: "acct_w", AmountMicros: 1, Source: "promotion"})
	v, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	w := kafkax.NewWriter(c.Brokers, c.Topics.Notifications, kafkax.DefaultWriterConfig)
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("acct_w"), Value: v}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for r.svc.Webhooks().Stats.Delivered.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the notification was not delivered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	if got[e.ID] != 1 || len(got) != 1 {
		t.Fatalf("received %v, want %s once", got, e.ID)
	}
	mu.Unlock()
	resp, err := http.Get(r.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(m), "tally_ledger_webhook_delivered_total 1") {
		t.Fatalf("metrics lack the delivery:\n%s", m)
	}
}
