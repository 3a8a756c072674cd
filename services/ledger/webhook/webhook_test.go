package webhook_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/webhook"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// t0 stamps every test envelope, so that the same notification encodes to the same bytes.
var t0 = time.Now().UTC().Truncate(time.Second)

var secret = []byte("test-webhook-secret-0123456789abcdef")

// receiver is a real local HTTP endpoint that verifies every delivery and answers with what
// answer says for the id and the attempt (1-based) of that id.
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	got    map[string]int    // id -> 2xx answers given
	tries  map[string]int    // id -> attempts
	bodies map[string]string // id -> last body
	bad    []string          // deliveries that failed verification
	answer func(id string, attempt int) int
}

func newReceiver(t *testing.T, answer func(id string, attempt int) int) *receiver {
	r := &receiver{t: t, got: map[string]int{}, tries: map[string]int{}, bodies: map[string]string{}, answer: answer}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		id := req.Header.Get(webhook.HeaderID)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err := webhook.Verify(secret, req.Header.Get(webhook.HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
			r.bad = append(r.bad, fmt.Sprintf("%s: %v", id, err))
		}
		if ct := req.Header.Get("Content-Type"); ct != webhook.ContentType || req.Method != http.MethodPost {
			r.bad = append(r.bad, fmt.Sprintf("%s: %s with content type %q", id, req.Method, ct))
		}
		if !strings.Contains(string(body), `"id":"`+id+`"`) {
			r.bad = append(r.bad, fmt.Sprintf("header id %q not the body's: %s", id, body))
		}
		r.tries[id]++
		code := r.answer(id, r.tries[id])
		if code/100 == 2 {
			r.got[id]++
			r.bodies[id] = string(body)
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "answer %d\n", code)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) snapshot() (got, tries map[string]int, bad []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	got, tries = map[string]int{}, map[string]int{}
	for k, v := range r.got {
		got[k] = v
	}
	for k, v := range r.tries {
		tries[k] = v
	}
	return got, tries, append([]string(nil), r.bad...)
}

func ok(string, int) int { return http.StatusNoContent }

// idOf is the envelope id of notification n of account (a UUIDv5, as the ledger's are).
func idOf(account string, n int) string {
	return uuid.NewSHA1(uuid.NameSpaceURL, []byte(fmt.Sprintf("test:%s/%d", account, n))).String()
}

// notification is any envelope: the dispatcher reads only its id and type.
func notification(t *testing.T, account string, n int) (string, []byte) {
	t.Helper()
	ev, err := events.NewWithID(idOf(account, n), "urn:tally:ledger", t0,
		events.CreditsGranted{GrantID: fmt.Sprintf("g-%d", n), AccountID: account, AmountMicros: int64(n + 1), Source: "promotion"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ev.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return ev.ID, b
}

func publish(t *testing.T, c *kafkatest.Cluster, msgs ...kafka.Message) {
	t.Helper()
	w := kafkax.NewWriter(c.Brokers, c.Topics.Notifications, kafkax.DefaultWriterConfig)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

// publishN publishes n notifications over several accounts and returns their ids.
func publishN(t *testing.T, c *kafkatest.Cluster, from, n int) []string {
	var ids []string
	var msgs []kafka.Message
	for i := from; i < from+n; i++ {
		acct := fmt.Sprintf("acct_%d", i%5)
		id, b := notification(t, acct, i)
		ids = append(ids, id)
		msgs = append(msgs, kafka.Message{Key: []byte(acct), Value: b})
	}
	publish(t, c, msgs...)
	return ids
}

func config(c *kafkatest.Cluster, url string) webhook.Config {
	return webhook.Config{URL: url, Secret: secret, Brokers: c.Brokers, Topics: c.Topics, Group: c.Group("webhook"),
		Timeout: 5 * time.Second, AttemptsMax: 8, BackoffMin: time.Millisecond, BackoffMax: 8 * time.Millisecond,
		QueueMax: 10, InFlightMax: 4, DedupeMax: 1000, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

type runningDispatcher struct {
	d      *webhook.Dispatcher
	cancel context.CancelFunc
	done   chan error
}

func startDispatcher(t *testing.T, cfg webhook.Config) *runningDispatcher {
	t.Helper()
	d, err := webhook.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningDispatcher{d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *runningDispatcher) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel = nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deadLetters reads the dead-letter topic until it holds n messages.
func deadLetters(t *testing.T, c *kafkatest.Cluster, n int) []kafka.Message {
	t.Helper()
	var out []kafka.Message
	deadline := time.Now().Add(60 * time.Second)
	for p := 0; ; p = (p + 1) % kafkatest.Partitions {
		if p == 0 {
			if len(out) >= n {
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d dead letters, want %d", len(out), n)
			}
			out = out[:0]
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: c.Brokers, Topic: c.Topics.DeadLetter, Partition: p, MaxWait: 50 * time.Millisecond})
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			m, err := r.ReadMessage(ctx)
			cancel()
			if err != nil {
				break
			}
			out = append(out, m)
		}
		r.Close()
	}
}

func header(m kafka.Message, k string) string {
	for _, h := range m.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}

// TestDeliversEachOnceSigned: every notification reaches the receiver exactly once, its body
// the envelope's bytes unchanged, with a valid signature and its id in Tally-Webhook-Id; an
// envelope the ledger re-emits with the same id is not posted again.
func TestDeliversEachOnceSigned(t *testing.T) {
	c := kafkatest.Start(t)
	rcv := newReceiver(t, ok)
	ids := publishN(t, c, 0, 20)
	// A re-emission: the same envelope again, later in the log.
	_, again := notification(t, "acct_3", 3)
	publish(t, c, kafka.Message{Key: []byte("acct_3"), Value: again})
	d := startDispatcher(t, config(c, rcv.srv.URL))
	waitFor(t, "21 messages handled", func() bool { return d.d.Stats.Delivered.Load()+d.d.Stats.Skipped.Load() == 21 })
	d.stop()
	got, tries, bad := rcv.snapshot()
	if len(bad) > 0 {
		t.Fatalf("bad deliveries: %v", bad)
	}
	if len(got) != 20 {
		t.Fatalf("%d distinct ids received, want 20: %v", len(got), got)
	}
	for _, id := range ids {
		if got[id] != 1 || tries[id] != 1 {
			t.Errorf("%s: delivered %d times in %d attempts, want 1", id, got[id], tries[id])
		}
	}
	if s := d.d.Stats.Skipped.Load(); s != 1 {
		t.Errorf("skipped %d re-emitted ids, want 1", s)
	}
	_, want := notification(t, "acct_3", 3)
	if rcv.bodies[idOf("acct_3", 3)] != string(want) {
		t.Errorf("body changed in transit:\n%s\n%s", rcv.bodies[idOf("acct_3", 3)], want)
	}
}

// TestRetriesThenDelivers: a receiver that fails three times (503, 429, 408) gets the
// notification on the fourth attempt; the waits between attempts follow the exponential
// backoff.
func TestRetriesThenDelivers(t *testing.T) {
	c := kafkatest.Start(t)
	rcv := newReceiver(t, func(id string, attempt int) int {
		switch attempt {
		case 1:
			return http.StatusServiceUnavailable
		case 2:
			return http.StatusTooManyRequests
		case 3:
			return http.StatusRequestTimeout
		}
		return http.StatusOK
	})
	ids := publishN(t, c, 0, 1)
	var mu sync.Mutex
	var waits []time.Duration
	cfg := config(c, rcv.srv.URL)
	cfg.BackoffMin, cfg.BackoffMax = 2*time.Millisecond, 100*time.Millisecond
	cfg.OnRetry = func(id string, attempt int, wait time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		waits = append(waits, wait)
	}
	d := startDispatcher(t, cfg)
	waitFor(t, "delivery", func() bool { return d.d.Stats.Delivered.Load() == 1 })
	d.stop()
	got, tries, bad := rcv.snapshot()
	if len(bad) > 0 || got[ids[0]] != 1 || tries[ids[0]] != 4 {
		t.Fatalf("got %v in %v attempts, bad %v; want 1 delivery on the 4th attempt", got, tries, bad)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []time.Duration{2 * time.Millisecond, 4 * time.Millisecond, 8 * time.Millisecond}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	if r := d.d.Stats.Retried.Load(); r != 3 {
		t.Fatalf("retried %d, want 3", r)
	}
}

// TestRetryAfterHonoured: a 429 with Retry-After: 1 waits a second, although the backoff
// alone would wait a millisecond (the wait is observed, not timed).
func TestRetryAfterHonoured(t *testing.T) {
	c := kafkatest.Start(t)
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if first {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(srv.Close)
	publishN(t, c, 0, 1)
	cfg := config(c, srv.URL)
	cfg.BackoffMin, cfg.BackoffMax = time.Millisecond, 2*time.Second
	var waits []time.Duration
	cfg.OnRetry = func(_ string, _ int, w time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		waits = append(waits, w)
	}
	d := startDispatcher(t, cfg)
	waitFor(t, "delivery", func() bool { return d.d.Stats.Delivered.Load() == 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(waits) != 1 || waits[0] != time.Second {
		t.Fatalf("waits %v, want [1s]", waits)
	}
}

// TestTransportErrorRetried: a connection closed without an answer is retried.
func TestTransportErrorRetried(t *testing.T) {
	c := kafkatest.Start(t)
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if first {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		if err := webhook.Verify(secret, r.Header.Get(webhook.HeaderSignature), mustRead(r), time.Now(), time.Minute); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	publishN(t, c, 0, 1)
	d := startDispatcher(t, config(c, srv.URL))
	waitFor(t, "delivery", func() bool { return d.d.Stats.Delivered.Load() == 1 })
	mu.Lock()
	defer mu.Unlock()
	if n != 2 || d.d.Stats.Retried.Load() != 1 {
		t.Fatalf("%d attempts, %d retried; want 2 and 1", n, d.d.Stats.Retried.Load())
	}
}

func mustRead(r *http.Request) []byte {
	b, _ := io.ReadAll(r.Body)
	return b
}

// TestDeadLetters: a 400 is final on the first attempt, a receiver that keeps failing uses up
// the attempts, and an unreadable message is never posted; each goes to the dead-letter
// topic with the reason and its origin, and the partition moves on.
func TestDeadLetters(t *testing.T) {
	c := kafkatest.Start(t)
	rcv := newReceiver(t, func(id string, attempt int) int {
		switch {
		case id == idOf("acct_bad", 1):
			return http.StatusBadRequest
		case id == idOf("acct_down", 2):
			return http.StatusBadGateway
		case id == idOf("acct_moved", 4):
			return http.StatusFound // not followed: a POST would become a GET
		}
		return http.StatusOK
	})
	badID, bad := notification(t, "acct_bad", 1)
	downID, down := notification(t, "acct_down", 2)
	_, good := notification(t, "acct_bad", 3)
	movedID, moved := notification(t, "acct_moved", 4)
	publish(t, c,
		kafka.Message{Key: []byte("acct_moved"), Value: moved},
		kafka.Message{Key: []byte("acct_bad"), Value: bad},
		kafka.Message{Key: []byte("acct_down"), Value: down},
		kafka.Message{Key: []byte("acct_bad"), Value: []byte("not json")},
		kafka.Message{Key: []byte("acct_bad"), Value: good})
	cfg := config(c, rcv.srv.URL)
	cfg.AttemptsMax = 3
	d := startDispatcher(t, cfg)
	waitFor(t, "all handled", func() bool { return d.d.Stats.Delivered.Load()+d.d.Stats.DeadLettered.Load() == 5 })
	if d.d.Stats.DeadLettered.Load() != 4 {
		t.Fatalf("dead-lettered %d, want 4", d.d.Stats.DeadLettered.Load())
	}
	got, tries, badDeliveries := rcv.snapshot()
	if len(badDeliveries) > 0 || tries[badID] != 1 || tries[downID] != 3 || tries[movedID] != 1 || got[idOf("acct_bad", 3)] != 1 {
		t.Fatalf("attempts %v, delivered %v, bad %v", tries, got, badDeliveries)
	}
	reasons := map[string]string{}
	for _, m := range deadLetters(t, c, 4) {
		if header(m, kafkax.HeaderDLQTopic) != c.Topics.Notifications || header(m, kafkax.HeaderDLQConsumer) == "" {
			t.Errorf("dead letter without its origin: %v", m.Headers)
		}
		reasons[string(m.Value)] = header(m, kafkax.HeaderDLQReason)
	}
	if r := reasons[string(bad)]; !strings.Contains(r, "status 400") || !strings.Contains(r, "attempt 1") {
		t.Errorf("400 reason %q", r)
	}
	if r := reasons[string(down)]; !strings.Contains(r, "after 3 attempts") || !strings.Contains(r, "status 502") {
		t.Errorf("exhausted reason %q", r)
	}
	if r := reasons["not json"]; !strings.Contains(r, "not a JSON") {
		t.Errorf("unreadable reason %q", r)
	}
	if r := reasons[string(moved)]; !strings.Contains(r, "status 302") {
		t.Errorf("redirect reason %q", r)
	}
}

// TestRestartResumes: a dispatcher stopped while a notification is being retried, with more
// published while it is down, delivers all of them after a restart in the same group: none
// lost, and none of those delivered and committed before the stop posted again.
func TestRestartResumes(t *testing.T) {
	c := kafkatest.Start(t)
	var mu sync.Mutex
	down := true
	rcv := newReceiver(t, func(id string, attempt int) int {
		mu.Lock()
		defer mu.Unlock()
		if id == idOf("acct_0", 10) && down {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	first := publishN(t, c, 0, 10)
	cfg := config(c, rcv.srv.URL)
	cfg.AttemptsMax = 100
	cfg.BackoffMin, cfg.BackoffMax = 5*time.Millisecond, 20*time.Millisecond
	d1 := startDispatcher(t, cfg)
	waitFor(t, "first 10 delivered", func() bool { return d1.d.Stats.Delivered.Load() == 10 })
	stuck := publishN(t, c, 10, 1)
	waitFor(t, "the stuck one retried", func() bool { return d1.d.Stats.Retried.Load() >= 2 })
	d1.stop()
	if d1.d.Stats.DeadLettered.Load() != 0 {
		t.Fatal("dead-lettered before the attempts ran out")
	}
	later := publishN(t, c, 11, 10)
	mu.Lock()
	down = false
	mu.Unlock()
	d2 := startDispatcher(t, cfg)
	waitFor(t, "the rest delivered", func() bool { return d2.d.Stats.Delivered.Load() == 11 })
	d2.stop()
	got, _, bad := rcv.snapshot()
	if len(bad) > 0 {
		t.Fatalf("bad deliveries %v", bad)
	}
	for _, id := range append(append(first, stuck...), later...) {
		if got[id] != 1 {
			t.Errorf("%s delivered %d times, want 1", id, got[id])
		}
	}
	if len(got) != 21 {
		t.Fatalf("%d ids delivered, want 21", len(got))
	}
}

func TestConfigValidate(t *testing.T) {
	c := webhook.Config{URL: "http://x/hook", Secret: secret, Brokers: []string{"b:1"}, Topics: kafkax.NewTopics("t."), Group: "g",
		Timeout: time.Second, AttemptsMax: 1, BackoffMin: time.Millisecond, BackoffMax: time.Millisecond, QueueMax: 1, InFlightMax: 1}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*webhook.Config){
		"ftp url":         func(c *webhook.Config) { c.URL = "ftp://x/hook" },
		"no host":         func(c *webhook.Config) { c.URL = "http:///hook" },
		"no secret":       func(c *webhook.Config) { c.Secret = nil },
		"no attempts":     func(c *webhook.Config) { c.AttemptsMax = 0 },
		"backoff max<min": func(c *webhook.Config) { c.BackoffMax = 0 },
		"no in-flight":    func(c *webhook.Config) { c.InFlightMax = 0 },
	} {
		cc := c
		mut(&cc)
		if cc.Validate() == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
