// Package webhook delivers the ledger's notifications topic to an HTTP endpoint as signed
// webhooks. It runs inside the ledger process when LEDGER_WEBHOOK_URL is set.
//
// The dispatcher is a member of its own consumer group on Topics.Notifications. For every
// message it POSTs the message value, the raw CloudEvents envelope, unchanged, with
//
//	Content-Type: application/cloudevents+json
//	Tally-Webhook-Id: <envelope id>
//	Tally-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//
// A 2xx answer is a delivery. 408, 429, 5xx and transport errors (timeouts included) are
// retried with exponential backoff (shared/backoff) up to AttemptsMax attempts; any other
// status (3xx, other 4xx), an unreadable envelope, or the attempts exhausted send the message
// to the dead-letter topic with the reason (kafkax.DeadLetter): nothing is dropped silently.
//
// At least once: a message's offset is committed only after it was delivered or
// dead-lettered. Each partition is delivered in order, one message at a time, so a failing
// message holds its partition back for at most its retry budget. A bounded set of recently
// delivered envelope ids (DedupeMax) keeps a running dispatcher from posting a notification
// twice when the ledger re-emits it with the same id (after a ledger restart); a dispatcher
// restart can still post a message again (one delivered but not yet committed), so receivers
// dedupe on Tally-Webhook-Id.
package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/backoff"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Config bounds the dispatcher. The ledger fills it from the LEDGER_WEBHOOK_* settings.
type Config struct {
	// URL is the receiver's endpoint (http or https).
	URL string
	// Secret is the HMAC-SHA256 key of the signatures.
	Secret  []byte
	Brokers []string
	Topics  kafkax.Topics
	// Group is the dispatcher's consumer group (its own, not the ledger's).
	Group string
	// Timeout bounds one attempt: connect, send, and the answer's headers and body.
	Timeout time.Duration
	// AttemptsMax bounds the attempts of one message, after which it is dead-lettered.
	AttemptsMax int
	// BackoffMin and BackoffMax bound the wait between attempts: BackoffMin after the first
	// failure, doubling, at most BackoffMax. A Retry-After of a 429 or 503 (seconds) lengthens
	// the wait, up to BackoffMax.
	BackoffMin, BackoffMax time.Duration
	// QueueMax bounds the messages prefetched per assigned partition.
	QueueMax int
	// InFlightMax bounds the messages being delivered at once, over all partitions.
	InFlightMax int
	// DedupeMax bounds the delivered envelope ids remembered (0 = none).
	DedupeMax int
	// KafkaTLS is the KAFKA_TLS_* client config (nil = plaintext).
	KafkaTLS *tls.Config
	// Client sends the requests (nil = a client with no redirects and Timeout per attempt).
	Client   *http.Client
	Logger   *slog.Logger
	Registry prometheus.Registerer
	// Now stamps the signatures (nil = time.Now).
	Now func() time.Time
	// OnRetry, when set (tests), observes each retry: the envelope id, the attempt that
	// failed (1-based) and the wait before the next.
	OnRetry func(id string, attempt int, wait time.Duration)
}

// Validate checks the bounds.
func (c Config) Validate() error {
	var errs []error
	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("webhook: URL %q: want http(s)://host/path", c.URL))
	}
	if len(c.Secret) == 0 {
		errs = append(errs, errors.New("webhook: a secret is required"))
	}
	if len(c.Brokers) == 0 || c.Topics.Notifications == "" || c.Topics.DeadLetter == "" || c.Group == "" {
		errs = append(errs, errors.New("webhook: brokers, topics and group are required"))
	}
	if c.Timeout <= 0 || c.AttemptsMax < 1 || c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin || c.QueueMax < 1 ||
		c.InFlightMax < 1 || c.DedupeMax < 0 {
		errs = append(errs, errors.New("webhook: timeout, attempts, backoff, queue and in-flight bounds must be positive (backoff max >= min)"))
	}
	return errors.Join(errs...)
}

// Stats are the dispatcher's counters (tests read them; the metrics count the same).
type Stats struct {
	// Delivered counts messages answered 2xx and committed; Retried counts failed attempts
	// that were retried; DeadLettered counts messages dead-lettered and committed; Skipped
	// counts messages not posted because their id was delivered before (DedupeMax).
	Delivered, Retried, DeadLettered, Skipped atomic.Int64
}

// Dispatcher is one consumer-group member.
type Dispatcher struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	now    func() time.Time
	m      *metrics
	dedupe *recent
	sem    chan struct{}
	// Stats counts what was done.
	Stats Stats
}

// New validates cfg and returns a dispatcher; nothing runs until Run.
func New(cfg Config) (*Dispatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Dispatcher{cfg: cfg, log: cfg.Logger, client: cfg.Client, now: cfg.Now, m: newMetrics(cfg.Registry),
		dedupe: newRecent(cfg.DedupeMax), sem: make(chan struct{}, cfg.InFlightMax)}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.client == nil {
		d.client = &http.Client{
			Timeout: cfg.Timeout,
			// A redirect is not followed (a POST would become a GET): it is a failed delivery.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return d, nil
}

// Run consumes until ctx ends. A generation that fails (a commit, a fetch) is rejoined after
// BackoffMin: nothing past the committed offsets is lost, and what was delivered but not
// committed is posted again (receivers dedupe on Tally-Webhook-Id).
func (d *Dispatcher) Run(ctx context.Context) error {
	dwc := kafkax.DefaultWriterConfig
	dwc.TLS = d.cfg.KafkaTLS
	dlq := kafkax.NewWriter(d.cfg.Brokers, "", dwc)
	defer dlq.Close()
	// A new group starts at the beginning: every notification kept is delivered.
	return kafkax.Group{ID: d.cfg.Group, Brokers: d.cfg.Brokers, Topics: []string{d.cfg.Topics.Notifications},
		TLS: d.cfg.KafkaTLS, Retry: d.cfg.BackoffMin, Name: "webhook", Log: d.log,
	}.Run(ctx, func(ctx context.Context, gen *kafka.Generation) error { return d.generation(ctx, gen, dlq) })
}

// generation delivers every assigned partition until the generation ends.
func (d *Dispatcher) generation(ctx context.Context, gen *kafka.Generation, dlq *kafka.Writer) error {
	runCtx, cancel := context.WithCancel(ctx) // ends with the generation, or at the first partition's error
	defer cancel()
	assigned := gen.Assignments[d.cfg.Topics.Notifications]
	var commitMu sync.Mutex
	errs := make(chan error, len(assigned))
	for _, a := range assigned {
		go func(a kafka.PartitionAssignment) { errs <- d.partition(runCtx, gen, &commitMu, dlq, a) }(a)
	}
	var first error
	for range assigned {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	if runCtx.Err() != nil && errors.Is(first, context.Canceled) {
		return nil
	}
	return first
}

// partition delivers one partition in order, committing after each message.
func (d *Dispatcher) partition(ctx context.Context, gen *kafka.Generation, commitMu *sync.Mutex, dlq *kafka.Writer, a kafka.PartitionAssignment) error {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: d.cfg.Brokers, Topic: d.cfg.Topics.Notifications, Partition: a.ID,
		MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 500 * time.Millisecond, QueueCapacity: d.cfg.QueueMax,
		ReadLagInterval: -1, Dialer: kafkax.Dialer(d.cfg.KafkaTLS),
	})
	defer r.Close()
	off := a.Offset
	if off < 0 {
		off = kafka.FirstOffset
	}
	if err := r.SetOffset(off); err != nil {
		return fmt.Errorf("webhook: partition %d: seek %d: %w", a.ID, off, err)
	}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("webhook: partition %d: fetch: %w", a.ID, err)
		}
		outcome, err := d.handle(ctx, dlq, m)
		if err != nil { // ctx ended: not committed, so delivered again later
			return nil
		}
		commitMu.Lock()
		err = gen.CommitOffsets(map[string]map[int]int64{d.cfg.Topics.Notifications: {a.ID: m.Offset + 1}})
		commitMu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("webhook: partition %d: commit %d: %w", a.ID, m.Offset+1, err)
		}
		switch outcome {
		case delivered:
			d.Stats.Delivered.Add(1)
		case deadLettered:
			d.Stats.DeadLettered.Add(1)
		case skipped:
			d.Stats.Skipped.Add(1)
		}
	}
}

type outcome int

const (
	delivered outcome = iota
	deadLettered
	skipped
)

// envelope is what the dispatcher reads of a message: the id and type.
type envelope struct {
	ID   string `json:"id"`
	Type string `json:"type"`
}

// handle delivers m or dead-letters it. It returns an error only when ctx ended first.
func (d *Dispatcher) handle(ctx context.Context, dlq *kafka.Writer, m kafka.Message) (outcome, error) {
	var env envelope
	reason := ""
	switch {
	case len(m.Value) > events.MaxEventBytes:
		reason = fmt.Sprintf("webhook: message of %d bytes, more than %d", len(m.Value), events.MaxEventBytes)
	case json.Unmarshal(m.Value, &env) != nil:
		reason = "webhook: not a JSON CloudEvents envelope"
	default:
		if err := events.CheckID("id", env.ID); err != nil {
			reason = "webhook: envelope " + err.Error()
		}
	}
	if reason == "" {
		if d.dedupe.has(env.ID) {
			d.m.skipped.Inc()
			return skipped, nil
		}
		var err error
		if reason, err = d.deliver(ctx, env, m.Value); err != nil {
			return 0, err
		}
		if reason == "" {
			d.dedupe.add(env.ID)
			d.m.delivered.Inc()
			return delivered, nil
		}
	}
	// Dead-letter, retried until it is written or ctx ends: never dropped.
	for n := int64(1); ; n++ {
		err := kafkax.DeadLetter(ctx, dlq, d.cfg.Topics.DeadLetter, "webhook:"+d.cfg.Group, m, reason)
		if err == nil {
			break
		}
		d.log.Warn("webhook: dead-letter write failed; retrying", "err", kafkax.ShortErr(err))
		if !backoff.Sleep(ctx, backoff.Policy{Min: d.cfg.BackoffMin, Max: d.cfg.BackoffMax}.Wait(n)) {
			return 0, ctx.Err()
		}
	}
	d.log.Warn("webhook: dead-lettered", "id", env.ID, "type", env.Type, "partition", m.Partition, "offset", m.Offset, "reason", reason)
	d.m.deadLettered.Inc()
	return deadLettered, nil
}

// deliver posts body until a 2xx (reason ""), a final failure (its reason) or ctx ends (error).
func (d *Dispatcher) deliver(ctx context.Context, env envelope, body []byte) (string, error) {
	pol := backoff.Policy{Min: d.cfg.BackoffMin, Max: d.cfg.BackoffMax}
	var last string
	for attempt := 1; ; attempt++ {
		select {
		case d.sem <- struct{}{}:
		case <-ctx.Done():
			return "", ctx.Err()
		}
		t0 := time.Now()
		retry, after, why := d.attempt(ctx, env.ID, body)
		d.m.latency.Observe(time.Since(t0).Seconds())
		<-d.sem
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if why == "" {
			return "", nil
		}
		last = why
		if !retry {
			return fmt.Sprintf("webhook: %s refused on attempt %d: %s", env.Type, attempt, why), nil
		}
		if attempt >= d.cfg.AttemptsMax {
			return fmt.Sprintf("webhook: %s not delivered after %d attempts, last: %s", env.Type, attempt, last), nil
		}
		wait := max(pol.Wait(int64(attempt)), min(after, d.cfg.BackoffMax))
		d.m.retried.Inc()
		d.Stats.Retried.Add(1)
		if d.cfg.OnRetry != nil {
			d.cfg.OnRetry(env.ID, attempt, wait)
		}
		if !backoff.Sleep(ctx, wait) {
			return "", ctx.Err()
		}
	}
}

// responseReadMax bounds the bytes of an answer read (and quoted in a dead-letter reason).
const responseReadMax = 4 << 10

// attempt makes one POST. why is "" on a 2xx; otherwise retry says whether the failure is
// transient, and after is a Retry-After the receiver asked for (0 = none).
func (d *Dispatcher) attempt(ctx context.Context, id string, body []byte) (retry bool, after time.Duration, why string) {
	actx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, d.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return false, 0, err.Error()
	}
	req.Header.Set("Content-Type", ContentType)
	req.Header.Set(HeaderID, id)
	req.Header.Set(HeaderSignature, Sign(d.cfg.Secret, d.now(), body))
	req.Header.Set("User-Agent", "tally-webhook/1")
	resp, err := d.client.Do(req)
	if err != nil {
		return true, 0, "transport: " + err.Error()
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, responseReadMax))
	resp.Body.Close()
	code := resp.StatusCode
	if code >= 200 && code < 300 {
		return false, 0, ""
	}
	why = "status " + strconv.Itoa(code)
	if s := printable(snippet, 200); s != "" {
		why += ": " + s
	}
	retry = code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		if secs, err := strconv.ParseInt(resp.Header.Get("Retry-After"), 10, 64); err == nil && secs > 0 && secs < 86_400 {
			after = time.Duration(secs) * time.Second
		}
	}
	return retry, after, why
}

// printable is at most n bytes of b with control characters replaced.
func printable(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	out := make([]rune, 0, len(b))
	for _, r := range string(bytes.TrimSpace(b)) {
		if r < 0x20 || r == 0x7f {
			r = ' '
		}
		out = append(out, r)
	}
	return string(out)
}

// recent is a bounded set of ids, the oldest forgotten first.
type recent struct {
	mu   sync.Mutex
	max  int
	ids  map[string]struct{}
	ring []string
	next int
}

func newRecent(n int) *recent { return &recent{max: n, ids: make(map[string]struct{}, min(n, 1024))} }

func (r *recent) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.ids[id]
	return ok
}

func (r *recent) add(id string) {
	if r.max == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.ids[id]; ok {
		return
	}
	if len(r.ring) < r.max {
		r.ring = append(r.ring, id)
	} else {
		delete(r.ids, r.ring[r.next])
		r.ring[r.next] = id
		r.next = (r.next + 1) % r.max
	}
	r.ids[id] = struct{}{}
}

type metrics struct {
	delivered, retried, deadLettered, skipped prometheus.Counter
	latency                                   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_webhook_delivered_total",
			Help: "Notifications delivered to LEDGER_WEBHOOK_URL (answered 2xx)."}),
		retried: prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_webhook_retried_total",
			Help: "Webhook attempts that failed transiently (408, 429, 5xx, transport) and were retried."}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_webhook_dead_lettered_total",
			Help: "Notifications sent to the dead-letter topic: refused (3xx, 4xx), unreadable, or out of attempts."}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "tally_ledger_webhook_duplicates_skipped_total",
			Help: "Notifications not posted again: their envelope id was delivered recently (LEDGER_WEBHOOK_DEDUPE_MAX)."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_ledger_webhook_attempt_seconds",
			Help: "Time per webhook attempt, to the answer or the failure.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}),
	}
	if reg != nil {
		reg.MustRegister(m.delivered, m.retried, m.deadLettered, m.skipped, m.latency)
	}
	return m
}
