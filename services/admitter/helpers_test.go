package admitter

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/pricebook"
)

const testSecret = "s3cret-key-1"

// testBook is the default price book plus test tiers with small, exact limits.
func testBook(t testing.TB) string {
	t.Helper()
	b := pricebook.Default()
	b.Tiers["tiny"] = pricebook.Tier{RatePerMinute: 60, Burst: 2, ConcurrentMax: 3,
		Allowance: []pricebook.Window{{Name: "5h", LengthMs: 18_000_000, Micros: 1_000_000}}}
	b.Tiers["wide"] = pricebook.Tier{RatePerMinute: 600_000, Burst: 100_000, ConcurrentMax: 100_000}
	b.Tiers["conc3"] = pricebook.Tier{RatePerMinute: 600_000, Burst: 100_000, ConcurrentMax: 3}
	bench := b.Endpoints["codex.responses"]
	bench.CapacityInflight = 1_000_000 // the HTTP benchmark admits without finishing
	b.Endpoints["bench.code"] = bench
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(b)
	p := filepath.Join(t.TempDir(), "book.json")
	if err := os.WriteFile(p, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func testConfig(t testing.TB, c *kafkatest.Cluster) Config {
	cfg := DefaultConfig()
	cfg.KafkaBrokers = c.Brokers[0]
	for _, b := range c.Brokers[1:] {
		cfg.KafkaBrokers += "," + b
	}
	cfg.TopicPrefix = c.Prefix
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.APIKeys = "k1:" + httpx.HashSecret(testSecret)
	cfg.PriceBookPath = testBook(t)
	cfg.PublishTimeoutMs = 3000
	cfg.AdaptiveEnabled = false
	cfg.IdempotencyMax = 1000
	if p := os.Getenv("ADMITTER_PRODUCER"); p != "" { // run the suite on either producer
		cfg.Producer = p
	}
	// ... and on other eager producer settings.
	if v, err := strconv.Atoi(os.Getenv("ADMITTER_INFLIGHT_MAX")); err == nil {
		cfg.InflightMax = v
	}
	if v, err := strconv.ParseInt(os.Getenv("ADMITTER_LINGER_MS"), 10, 64); err == nil {
		cfg.LingerMs = v
	}
	return cfg
}

type running struct {
	*Service
	url string
}

// start runs a service until the test ends and waits until it is ready.
func start(t testing.TB, cfg Config) *running {
	t.Helper()
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	s, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	select {
	case <-s.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("not ready after 30s")
	}
	return &running{Service: s, url: "http://" + s.Addr()}
}

// seed publishes state events (balance.updated, limits.adjusted) to their compacted topic.
func seed(t testing.TB, c *kafkatest.Cluster, data ...events.Data) {
	t.Helper()
	w := kafkax.NewWriter(c.Brokers, "", kafkax.DefaultWriterConfig)
	defer w.Close()
	var msgs []kafka.Message
	for _, d := range data {
		ev, err := events.New("test", time.Now(), d)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := ev.Encode()
		m := kafka.Message{Value: v, Key: []byte(d.Subject())}
		switch p := d.(type) {
		case events.BalanceUpdated:
			m.Topic = c.Topics.Balances
		case events.LimitsAdjusted:
			m.Topic, m.Key = c.Topics.Limits, []byte(p.Key())
		default:
			m.Topic = c.Topics.Events
		}
		msgs = append(msgs, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

func bal(acct, tier string, availMicros int64) events.BalanceUpdated {
	return events.BalanceUpdated{AccountID: acct, Tier: tier, Priority: events.PriorityStandard, AvailableMicros: availMicros, Offset: -1}
}

// waitFor polls cond (under the service lock) until it holds.
func waitFor(t testing.TB, s *running, what string, cond func(tb *decide.Table) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		ok := cond(s.table)
		s.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(a.body, v); err != nil {
		t.Fatalf("decode %s: %v", a.body, err)
	}
}

func (a answer) code(t testing.TB) string {
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	a.decode(t, &e)
	return e.Error.Code
}

func post(t testing.TB, url, key string, body any) answer {
	t.Helper()
	var raw []byte
	switch b := body.(type) {
	case []byte:
		raw = b
	case string:
		raw = []byte(b)
	default:
		raw, _ = json.Marshal(body)
	}
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, b}
}

// positions maps event ids read by readEvents to their [partition, offset].
var positions sync.Map

// readEvents reads the events topic from the start until stop says enough or 20 s pass.
func readEvents(t testing.TB, c *kafkatest.Cluster, stop func([]events.Event) bool) []events.Event {
	t.Helper()
	return readEventsAs(t, c, func(_ kafka.Message, ev events.Event) events.Event { return ev }, stop)
}

// readEventsAs reads the events topic from the start, each record as as makes it of the
// message and its decoded event, until stop says enough or 20 s pass. It records every
// event's position in positions.
func readEventsAs[T any](t testing.TB, c *kafkatest.Cluster, as func(kafka.Message, events.Event) T, stop func([]T) bool) []T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := make(chan T, 1024)
	for p := 0; p < kafkatest.Partitions; p++ {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: c.Brokers, Topic: c.Topics.Events, Partition: p,
			MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 50 * time.Millisecond})
		defer r.Close()
		go func() {
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					return
				}
				ev, err := events.Decode(m.Value)
				if err != nil {
					t.Errorf("undecodable event at %d/%d: %v", p, m.Offset, err)
					continue
				}
				positions.Store(ev.ID, [2]int64{int64(p), m.Offset})
				select {
				case out <- as(m, ev):
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	var got []T
	for !stop(got) {
		select {
		case v := <-out:
			got = append(got, v)
		case <-ctx.Done():
			t.Fatalf("events: timed out with %d events", len(got))
		}
	}
	return got
}

func count(evs []events.Event, typ, requestID string) int {
	n := 0
	for _, e := range evs {
		if e.Type != typ {
			continue
		}
		var id string
		switch p := e.Payload.(type) {
		case events.RequestStarted:
			id = p.RequestID
		case events.RequestRejected:
			id = p.RequestID
		case events.RequestFinished:
			id = p.RequestID
		}
		if requestID == "" || id == requestID {
			n++
		}
	}
	return n
}
