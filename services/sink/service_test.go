package sink_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/sink"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/services/sink/pipeline"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

func testConfig(c *kafkatest.Cluster, ch chstore.Config) sink.Config {
	cfg := sink.DefaultConfig()
	cfg.Brokers = strings.Join(c.Brokers, ",")
	cfg.TopicPrefix = c.Prefix
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.GroupID = c.Group("sink")
	cfg.BatchWaitMs = 50
	cfg.BatchRowsMax = 2000
	cfg.RetryBackoffMsMin, cfg.RetryBackoffMsMax = 10, 100
	cfg.Detect.IntervalMs = 0
	cfg.ClickHouse = ch
	return cfg
}

// start runs a sink until the test ends or stop is called; the returned channel yields Run's
// result.
func start(t *testing.T, cfg sink.Config, hooks pipeline.Hooks) (*sink.Service, context.CancelFunc, <-chan error) {
	t.Helper()
	svc, err := sink.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	svc.SetHooks(hooks)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() { done <- svc.Run(ctx); close(finished) }()
	t.Cleanup(func() { cancel(); <-finished })
	select {
	case <-svc.Ready():
	case <-finished:
		t.Fatalf("sink stopped before ready: %v", <-done)
	case <-time.After(2 * time.Minute):
		t.Fatal("sink not ready")
	}
	return svc, cancel, done
}

func openCH(t *testing.T, cfg chstore.Config) clickhouse.Conn {
	t.Helper()
	conn, err := chstore.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func waitCount(t *testing.T, conn clickhouse.Conn, q string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var n uint64
	for time.Now().Before(deadline) {
		if err := conn.QueryRow(context.Background(), q).Scan(&n); err == nil && n >= want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %d, want %d", q, n, want)
}

func TestSinkEndToEnd(t *testing.T) {
	c := kafkatest.Start(t)
	ch := chtest.Config(t)
	const n = 500
	msgs := testevents.Stream(t, c.Topics, n, 7, time.Now().UTC().Add(-time.Hour))
	bad := []kafka.Message{
		{Topic: c.Topics.Events, Key: []byte("x"), Value: []byte("{not json")},
		{Topic: c.Topics.Journal, Key: []byte("y"), Value: []byte(`{"specversion":"1.0","id":"nope","type":"tally.request.started.v1"}`)},
	}
	// A ledger clock tick on the events topic is skipped: no row, not dead-lettered.
	tick, err := events.New("urn:tally:ledger", time.Now(), events.ClockTick{Partition: 0})
	if err != nil {
		t.Fatal(err)
	}
	tv, _ := tick.Encode()
	bad = append(bad, kafka.Message{Topic: c.Topics.Events, Value: tv})
	testevents.Produce(t, c.Brokers, append(msgs[:len(msgs)/2:len(msgs)/2], bad...))
	svc, _, _ := start(t, testConfig(c, ch), pipeline.Hooks{})
	testevents.Produce(t, c.Brokers, msgs[len(msgs)/2:])

	conn := openCH(t, ch)
	waitCount(t, conn, "SELECT count() FROM usage_events", 2*n)
	waitCount(t, conn, "SELECT count() FROM ledger_entries", n)
	// Give a duplicate a chance to show up before asserting there is none.
	time.Sleep(300 * time.Millisecond)
	if got := chtest.Count(t, conn, "SELECT count() FROM usage_events"); got != 2*n {
		t.Fatalf("usage_events: %d rows, want %d", got, 2*n)
	}
	if got := chtest.Count(t, conn, "SELECT uniqExact(event_id) FROM usage_events"); got != 2*n {
		t.Fatalf("usage_events: %d distinct events, want %d", got, 2*n)
	}
	if got := chtest.Count(t, conn, "SELECT toUInt64(sum(finished)) FROM usage_1m"); got != n {
		t.Fatalf("usage_1m finished: %d, want %d", got, n)
	}
	if got := chtest.Count(t, conn, "SELECT count() FROM requests_v WHERE outcome = 'succeeded' AND cost_micros > 0 AND tier = 'pro'"); got != n {
		t.Fatalf("requests_v: %d complete requests, want %d", got, n)
	}
	// Every Kafka position is stored and matches the topic it came from.
	if got := chtest.Count(t, conn, "SELECT count() FROM usage_events WHERE kafka_topic = '"+c.Topics.Events+"' AND kafka_offset >= 0"); got != 2*n {
		t.Fatalf("usage_events with events-topic positions: %d", got)
	}

	// Both bad messages are dead-lettered with a reason.
	dl := readDeadLetters(t, c, 2)
	for _, m := range dl {
		reason := header(m, kafkax.HeaderDLQReason)
		if reason == "" || header(m, kafkax.HeaderDLQConsumer) != "sink" {
			t.Errorf("dead letter without reason/consumer: %+v", m.Headers)
		}
	}
	if got := svc.Pipeline().Stats.DeadLetters.Load(); got != 2 {
		t.Fatalf("dead letters counted: %d", got)
	}

	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/nope": 404} {
		res, err := http.Get("http://" + svc.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("GET %s: %d %s", path, res.StatusCode, body)
		}
		if path == "/metrics" && !strings.Contains(string(body), "tally_sink_dead_letters_total 2") {
			t.Errorf("metrics lack the dead-letter count:\n%s", body)
		}
		if path == "/nope" && !strings.Contains(string(body), `"code":"not_found"`) {
			t.Errorf("404 body: %s", body)
		}
	}
	res, err := http.Post("http://"+svc.Addr()+"/readyz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz: %d", res.StatusCode)
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

func readDeadLetters(t *testing.T, c *kafkatest.Cluster, n int) []kafka.Message {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: c.Brokers, GroupID: c.Group("dlq-check"), Topic: c.Topics.DeadLetter,
		StartOffset: kafka.FirstOffset, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out []kafka.Message
	for len(out) < n {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read dead letters (%d of %d): %v", len(out), n, err)
		}
		out = append(out, m)
	}
	return out
}

var errCrash = errors.New("simulated crash after insert, before commit")

func TestSinkCrashAfterInsertBeforeCommit(t *testing.T) {
	const n = crashRequests
	_, ch, cfg, _ := runUntilCrash(t, 1)
	conn := openCH(t, ch)
	inserted := chtest.Count(t, conn, "SELECT count() FROM usage_events") + chtest.Count(t, conn, "SELECT count() FROM ledger_entries")
	if inserted == 0 {
		t.Fatal("the crashed flush inserted nothing: the test would prove nothing")
	}

	svc, _, _ := start(t, cfg, pipeline.Hooks{})
	waitCount(t, conn, "SELECT count() FROM usage_events", 2*n)
	waitCount(t, conn, "SELECT count() FROM ledger_entries", n)
	time.Sleep(300 * time.Millisecond)
	rowsN := chtest.Count(t, conn, "SELECT count() FROM usage_events")
	distinct := chtest.Count(t, conn, "SELECT uniqExact(event_id) FROM usage_events")
	if rowsN != distinct || rowsN != 2*n {
		t.Fatalf("usage_events: %d rows, %d distinct events, want %d of each", rowsN, distinct, 2*n)
	}
	if got := chtest.Count(t, conn, "SELECT count() FROM ledger_entries"); got != n {
		t.Fatalf("ledger_entries: %d rows, want %d", got, n)
	}
	if got := chtest.Count(t, conn, "SELECT toUInt64(sum(started)) FROM usage_1m"); got != n {
		t.Fatalf("usage_1m started: %d, want %d (a rollup counted a redelivered batch)", got, n)
	}
	if got := chtest.Count(t, conn, "SELECT toUInt64(sum(cost_micros)) FROM usage_1m") - chtest.Count(t, conn, "SELECT toUInt64(sum(cost_micros)) FROM requests_v"); got != 0 {
		t.Fatalf("rollup and requests disagree on cost by %d", got)
	}
	if svc.Pipeline().Stats.ReplayedBatches.Load() == 0 {
		t.Fatal("the restarted sink re-formed no recorded batch")
	}
	t.Logf("crashed flush inserted %d rows; replayed %d batches", inserted, svc.Pipeline().Stats.ReplayedBatches.Load())
}

// crashRequests is how many requests runUntilCrash produces (3 messages each: started,
// finished and the ledger entry).
const crashRequests = 3000

// runUntilCrash produces crashRequests requests and runs a sink with 1,500-row batches whose
// k-th flush stops it after the insert and before the offsets are committed (a simulated
// crash); it returns once the sink has stopped so, with the cluster, the ClickHouse config,
// the sink's config and the produced messages.
func runUntilCrash(t *testing.T, k int) (*kafkatest.Cluster, chstore.Config, sink.Config, []kafka.Message) {
	t.Helper()
	c := kafkatest.Start(t)
	ch := chtest.Config(t)
	msgs := testevents.Stream(t, c.Topics, crashRequests, 11, time.Now().UTC().Add(-time.Hour))
	testevents.Produce(t, c.Brokers, msgs)
	cfg := testConfig(c, ch)
	cfg.BatchRowsMax = 1500
	flushes := 0
	_, _, done := start(t, cfg, pipeline.Hooks{AfterInsert: func() error {
		if flushes++; flushes == k {
			return errCrash
		}
		return nil
	}})
	select {
	case err := <-done:
		if !errors.Is(err, errCrash) {
			t.Fatalf("first sink ended with %v, want the simulated crash", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("first sink did not crash")
	}
	return c, ch, cfg, msgs
}
