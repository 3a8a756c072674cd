package stack_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/webhook"
	"github.com/tallyhq/tally/services/tallyctl/internal/waitfor"
	"github.com/tallyhq/tally/services/tallyctl/stack"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// TestStackWebhooks: with a webhook URL, the stack generates the HMAC secret, keeps it in the
// data directory's keys.env, hands it to the ledger in a 0600 file, and the ledger posts the
// notifications topic signed with it.
func TestStackWebhooks(t *testing.T) {
	got := make(chan string, 10)
	var secret []byte
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify(secret, r.Header.Get(webhook.HeaderSignature), body, time.Now(), time.Minute); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		got <- r.Header.Get(webhook.HeaderID)
	}))
	defer rcv.Close()
	dir := t.TempDir()
	st := startStack(t, stack.Config{DataDir: dir, WebhookURL: rcv.URL}, false)
	secret = []byte(st.WebhookSecret)
	if len(st.WebhookSecret) != 64 {
		t.Fatalf("webhook secret %q: want 32 random bytes in hex", st.WebhookSecret)
	}
	fi, err := os.Stat(filepath.Join(dir, stack.WebhookSecretFileName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v %v", fi, err)
	}
	keys, _ := os.ReadFile(filepath.Join(dir, stack.KeysFileName))
	if !strings.Contains(string(keys), stack.WebhookSecretName+"="+st.WebhookSecret) {
		t.Fatalf("keys.env does not keep the webhook secret")
	}
	ev, err := events.New("urn:test", time.Now().UTC(), events.CreditsGranted{GrantID: "g-w", AccountID: "acct_w", AmountMicros: 1, Source: "promotion"})
	if err != nil {
		t.Fatal(err)
	}
	v, _ := ev.Encode()
	w := kafkax.NewWriter(st.Brokers, st.Topics.Notifications, kafkax.DefaultWriterConfig)
	defer w.Close()
	if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("acct_w"), Value: v}); err != nil {
		t.Fatal(err)
	}
	waitfor.Eventually(t, "the signed delivery", time.Minute, func() error {
		select {
		case id := <-got:
			if id != ev.ID {
				t.Fatalf("delivered %s, want %s", id, ev.ID)
			}
			return nil
		default:
			return os.ErrNotExist
		}
	})
}
