package ledger

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/services/ledger/webhook"
	"github.com/tallyhq/tally/shared/bounds"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// WebhookSettings are the LEDGER_WEBHOOK_* settings of the webhook dispatcher (package
// webhook), which runs in the ledger process when LEDGER_WEBHOOK_URL is set.
type WebhookSettings struct {
	// URL (LEDGER_WEBHOOK_URL, default "" = no webhooks; an http(s) URL of at most 2048 bytes)
	// receives every message of the notifications topic as a signed POST.
	URL string `env:"LEDGER_WEBHOOK_URL"`
	// SecretFile (LEDGER_WEBHOOK_SECRET_FILE, default ""; required with a URL) holds the HMAC
	// secret of the Tally-Signature header: at least 32 bytes, trailing whitespace ignored.
	// Keep it mode 0600; the ledger warns when others may read it.
	SecretFile string `env:"LEDGER_WEBHOOK_SECRET_FILE"`
	// Group (LEDGER_WEBHOOK_GROUP, default "tally-webhook") is the dispatcher's consumer group.
	Group string `env:"LEDGER_WEBHOOK_GROUP" envDefault:"tally-webhook"`
	// TimeoutMs (LEDGER_WEBHOOK_TIMEOUT_MS, default 10000, 100..600000) bounds one attempt.
	TimeoutMs int64 `env:"LEDGER_WEBHOOK_TIMEOUT_MS" envDefault:"10000"`
	// AttemptsMax (LEDGER_WEBHOOK_ATTEMPTS_MAX, default 8, 1..100) bounds the attempts of one
	// notification before it is dead-lettered.
	AttemptsMax int `env:"LEDGER_WEBHOOK_ATTEMPTS_MAX" envDefault:"8"`
	// BackoffMsMin (LEDGER_WEBHOOK_BACKOFF_MIN_MS, default 1000, 1..3600000) is the wait after
	// the first failed attempt; each further failure doubles it.
	BackoffMsMin int64 `env:"LEDGER_WEBHOOK_BACKOFF_MIN_MS" envDefault:"1000"`
	// BackoffMsMax (LEDGER_WEBHOOK_BACKOFF_MAX_MS, default 60000, BackoffMsMin..86400000) caps
	// the wait, a receiver's Retry-After included.
	BackoffMsMax int64 `env:"LEDGER_WEBHOOK_BACKOFF_MAX_MS" envDefault:"60000"`
	// QueueMax (LEDGER_WEBHOOK_QUEUE_MAX, default 100, 1..100000) bounds the notifications
	// prefetched per assigned partition.
	QueueMax int `env:"LEDGER_WEBHOOK_QUEUE_MAX" envDefault:"100"`
	// InFlightMax (LEDGER_WEBHOOK_IN_FLIGHT_MAX, default 16, 1..1024) bounds the POSTs made at
	// once (at most one per partition).
	InFlightMax int `env:"LEDGER_WEBHOOK_IN_FLIGHT_MAX" envDefault:"16"`
	// DedupeMax (LEDGER_WEBHOOK_DEDUPE_MAX, default 100000, 0..10000000) bounds the delivered
	// envelope ids remembered, about 100 bytes each, so that a notification the ledger
	// re-emits is not posted twice.
	DedupeMax int `env:"LEDGER_WEBHOOK_DEDUPE_MAX" envDefault:"100000"`
}

// DefaultWebhookSettings are the envDefault values (no URL: off).
var DefaultWebhookSettings = WebhookSettings{Group: "tally-webhook", TimeoutMs: 10_000, AttemptsMax: 8,
	BackoffMsMin: 1000, BackoffMsMax: 60_000, QueueMax: 100, InFlightMax: 16, DedupeMax: 100_000}

// webhookSecretBytesMin is the shortest accepted webhook secret.
const webhookSecretBytesMin = 32

// Enabled reports whether webhooks are on (LEDGER_WEBHOOK_URL is set).
func (w WebhookSettings) Enabled() bool { return w.URL != "" }

// readSecret reads SecretFile.
func (w WebhookSettings) readSecret() ([]byte, error) {
	if w.SecretFile == "" {
		return nil, errors.New("required when LEDGER_WEBHOOK_URL is set")
	}
	b, err := os.ReadFile(w.SecretFile)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, " \t\r\n")
	if len(b) < webhookSecretBytesMin {
		return nil, fmt.Errorf("%s: the secret is %d bytes, at least %d required", w.SecretFile, len(b), webhookSecretBytesMin)
	}
	return b, nil
}

// validate appends every bad setting to errs (the bounds are checked even when off).
func (w WebhookSettings) validate(errs *[]error) {
	if w.URL != "" {
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(w.URL) > 2048 {
			*errs = append(*errs, errors.New("LEDGER_WEBHOOK_URL: want an http(s)://host/path URL of at most 2048 bytes"))
		}
		if _, err := w.readSecret(); err != nil {
			*errs = append(*errs, fmt.Errorf("LEDGER_WEBHOOK_SECRET_FILE: %w", err))
		}
	}
	if err := events.CheckID("LEDGER_WEBHOOK_GROUP", w.Group); err != nil {
		*errs = append(*errs, err)
	}
	rng := bounds.Into[int64](errs, "LEDGER_WEBHOOK_")
	rng("TIMEOUT_MS", w.TimeoutMs, 100, 600_000)
	rng("ATTEMPTS_MAX", int64(w.AttemptsMax), 1, 100)
	rng("BACKOFF_MIN_MS", w.BackoffMsMin, 1, 3_600_000)
	rng("BACKOFF_MAX_MS", w.BackoffMsMax, max(w.BackoffMsMin, 1), 86_400_000)
	rng("QUEUE_MAX", int64(w.QueueMax), 1, 100_000)
	rng("IN_FLIGHT_MAX", int64(w.InFlightMax), 1, 1024)
	rng("DEDUPE_MAX", int64(w.DedupeMax), 0, 10_000_000)
}

// dispatcher builds the webhook dispatcher of these settings (nil when off).
func (w WebhookSettings) dispatcher(brokers []string, kafkaTLS *tls.Config, topics kafkax.Topics, log *slog.Logger, reg prometheus.Registerer) (*webhook.Dispatcher, error) {
	if !w.Enabled() {
		return nil, nil
	}
	secret, err := w.readSecret()
	if err != nil {
		return nil, fmt.Errorf("LEDGER_WEBHOOK_SECRET_FILE: %w", err)
	}
	if st, err := os.Stat(w.SecretFile); err == nil && st.Mode().Perm()&0o077 != 0 {
		log.Warn("ledger: the webhook secret file may be read by others; chmod 600 it", "file", w.SecretFile, "mode", st.Mode().Perm().String())
	}
	ms := time.Millisecond
	return webhook.New(webhook.Config{URL: w.URL, Secret: secret, Brokers: brokers, Topics: topics, Group: w.Group,
		Timeout: time.Duration(w.TimeoutMs) * ms, AttemptsMax: w.AttemptsMax,
		BackoffMin: time.Duration(w.BackoffMsMin) * ms, BackoffMax: time.Duration(w.BackoffMsMax) * ms,
		QueueMax: w.QueueMax, InFlightMax: w.InFlightMax, DedupeMax: w.DedupeMax, KafkaTLS: kafkaTLS,
		Logger: log, Registry: reg})
}
