package ledger_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/engine"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// steadyLog is a steady-state mix: one grant per account, then start/finish pairs.
func steadyLog(tb testing.TB, n, accounts int) []kafka.Message {
	at := time.Now().UTC()
	msgs := make([]kafka.Message, 0, n)
	add := func(d events.Data) {
		e, err := events.New("bench", at, d)
		if err != nil {
			tb.Fatal(err)
		}
		v, _ := e.Encode()
		msgs = append(msgs, kafka.Message{Key: []byte(e.Subject), Value: v})
	}
	for a := 0; a < accounts && len(msgs) < n; a++ {
		add(events.CreditsGranted{GrantID: "g", AccountID: fmt.Sprint("acct-", a), AmountMicros: 1_000_000_000_000, Source: events.GrantPurchase})
	}
	for i := 0; len(msgs) < n; i++ {
		acct, req := fmt.Sprint("acct-", i%accounts), fmt.Sprint("r", i)
		add(events.RequestStarted{RequestID: req, AccountID: acct, Endpoint: "codex.responses", Tier: "pro", Priority: events.PriorityStandard,
			Funding: events.FundingCredits, HoldMicros: 10_000, EstimateMicros: 10_000, HoldExpiresAt: at.Add(5 * time.Minute), PriceBookVersion: "v"})
		if len(msgs) < n {
			add(events.RequestFinished{RequestID: req, AccountID: acct, Endpoint: "codex.responses", Status: events.StatusSucceeded, CostMicros: 7_000, PriceBookVersion: "v"})
		}
	}
	return msgs
}

func produceMsgs(tb testing.TB, c *kafkatest.Cluster, msgs []kafka.Message) {
	w := kafkax.NewWriter(c.Brokers, c.Topics.Events, kafkax.WriterConfig{BatchTimeout: 2 * time.Millisecond, BatchSize: 1000, WriteTimeout: 30 * time.Second, AttemptsMax: 3})
	w.BatchBytes = engine.BatchBytesMax
	defer w.Close()
	for i := 0; i < len(msgs); i += 20_000 {
		if err := w.WriteMessages(context.Background(), msgs[i:min(i+20_000, len(msgs))]...); err != nil {
			tb.Fatal(kafkax.ShortErr(err))
		}
	}
}

// BenchmarkEndToEnd measures events/s consumed, folded, published (journal, balances,
// limits), persisted (ledger state) and committed, from an already-filled events topic.
// Run it on real Kafka: KAFKA_BROKERS=127.0.0.1:9092 go test -run X -bench EndToEnd -benchtime 200000x
func BenchmarkEndToEnd(b *testing.B) {
	c := kafkatest.Start(b)
	msgs := steadyLog(b, b.N, 10_000)
	produceMsgs(b, c, msgs)
	cfg := testConfig2(c)
	if v := os.Getenv("LEDGER_BENCH_BATCH_MAX"); v != "" {
		cfg.BatchMax, _ = strconv.Atoi(v)
		cfg.QueueMax = 2 * cfg.BatchMax
	}
	svc := startB(b, cfg)
	// Time from the end of the restore: joining the group is not folding (a real broker
	// delays the first rebalance by group.initial.rebalance.delay.ms, 3 s by default).
	for !svc.Ready() {
		time.Sleep(time.Millisecond)
	}
	b.ResetTimer()
	t0 := time.Now()
	for svc.Engine().Committed() < int64(b.N) {
		time.Sleep(2 * time.Millisecond)
	}
	el := time.Since(t0)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
	logStages(b, svc)
}

// logStages logs the per-stage time totals from /metrics.
func logStages(b *testing.B, svc *ledger.Service) {
	addr, _ := svc.Addr(context.Background())
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var lines []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "tally_ledger_batch_stage_seconds_sum") || strings.HasPrefix(l, "tally_ledger_batch_events_sum") || strings.HasPrefix(l, "tally_ledger_batch_events_count") {
			lines = append(lines, strings.TrimPrefix(l, "tally_ledger_batch_"))
		}
	}
	b.Logf("N=%d stage totals over all partitions: %s", b.N, strings.Join(lines, "; "))
}

// BenchmarkFreshness produces grants for fresh accounts at a fixed rate and measures the
// time from the start of each produce call to the account's balance.updated being read from
// the balances topic (what an admitter sees). Run with -benchtime 1x.
func BenchmarkFreshness(b *testing.B) {
	const rate, seconds = 5000, 10
	c := kafkatest.Start(b)
	svc := startB(b, testConfig2(c))
	_ = svc
	var mu sync.Mutex
	sent := map[string]time.Time{}
	var lat []time.Duration
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for p := 0; p < kafkatest.Partitions; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: c.Brokers, Topic: c.Topics.Balances, Partition: p, MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 10 * time.Millisecond, ReadLagInterval: -1})
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				now := time.Now()
				mu.Lock()
				if t, ok := sent[string(m.Key)]; ok {
					lat = append(lat, now.Sub(t))
					delete(sent, string(m.Key))
				}
				mu.Unlock()
			}
		}(p)
	}
	w := kafkax.NewWriter(c.Brokers, c.Topics.Events, kafkax.DefaultWriterConfig)
	defer w.Close()
	b.ResetTimer()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	n := 0
	sem := make(chan struct{}, 16)
	var pw sync.WaitGroup
	began := time.Now()
	for i := 0; i < seconds*100; i++ {
		<-tick.C
		batch := make([]kafka.Message, 0, rate/100)
		keys := make([]string, 0, rate/100)
		for j := 0; j < rate/100; j++ {
			acct := fmt.Sprint("fresh-", n)
			n++
			e, _ := events.New("bench", time.Now(), events.CreditsGranted{GrantID: "g", AccountID: acct, AmountMicros: 1, Source: events.GrantPurchase})
			v, _ := e.Encode()
			batch = append(batch, kafka.Message{Key: []byte(acct), Value: v})
			keys = append(keys, acct)
		}
		now := time.Now()
		mu.Lock()
		for _, k := range keys {
			sent[k] = now
		}
		mu.Unlock()
		// Up to 16 produce calls in flight, so a slow acknowledgement does not lower the rate.
		sem <- struct{}{}
		pw.Add(1)
		go func() {
			defer func() { <-sem; pw.Done() }()
			if err := w.WriteMessages(context.Background(), batch...); err != nil {
				b.Error(kafkax.ShortErr(err))
			}
		}()
	}
	pw.Wait()
	produced := time.Since(began)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		k := len(lat)
		mu.Unlock()
		if k == n {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) != n {
		b.Fatalf("saw %d of %d balance updates", len(lat), n)
	}
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
	b.ReportMetric(float64(n), "events")
	b.ReportMetric(float64(n)/produced.Seconds(), "produced-events/s")
}
