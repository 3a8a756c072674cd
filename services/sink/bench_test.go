package sink_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/sink"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/services/sink/pipeline"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// benchRequests requests = 3 × benchRequests messages (started, finished, ledger entry);
// BENCH_REQUESTS sets another count (a longer run amortizes the group join and the first
// batch over more rows).
var benchRequests = envInt("BENCH_REQUESTS", 70_000)

// runUntil runs a sink over pre-produced messages until want rows are inserted and returns
// the elapsed time since Ready, plus the steady-state rate between the first and last flush.
func runUntil(b *testing.B, cfg sink.Config, hooks pipeline.Hooks, want int64) (time.Duration, float64, *pipeline.Pipeline) {
	b.Helper()
	var mu sync.Mutex
	var first, last time.Time
	var firstRows, total int64
	inner := hooks.FlushDone
	hooks.FlushDone = func(bs []*rows.Batch, at time.Time) {
		n := int64(0)
		for _, x := range bs {
			n += int64(x.Rows())
		}
		mu.Lock()
		if first.IsZero() {
			first, firstRows = at, n
		}
		last, total = at, total+n
		mu.Unlock()
		if inner != nil {
			inner(bs, at)
		}
	}
	svc, err := sink.New(cfg, quiet)
	if err != nil {
		b.Fatal(err)
	}
	svc.SetHooks(hooks)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-svc.Ready()
	var peakHeap atomic.Uint64
	stopHeap := make(chan struct{})
	defer close(stopHeap)
	go func() {
		var ms runtime.MemStats
		for {
			select {
			case <-stopHeap:
				return
			case <-time.After(100 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peakHeap.Load() {
				peakHeap.Store(ms.HeapInuse)
			}
		}
	}()
	start, cpu0 := time.Now(), processCPU()
	p := svc.Pipeline()
	var firstMsg time.Duration
	for p.Stats.UsageRows.Load()+p.Stats.LedgerRows.Load() < want {
		select {
		case err := <-done:
			b.Fatalf("sink stopped: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
		if firstMsg == 0 && p.Stats.Messages.Load() > 0 {
			firstMsg = time.Since(start)
		}
	}
	elapsed := time.Since(start)
	// first_msg_s: from Ready to the first message batched (the group join and the first
	// fetches).
	b.ReportMetric(firstMsg.Seconds(), "first_msg_s")
	b.ReportMetric((processCPU() - cpu0).Seconds(), "cpu_s")
	b.ReportMetric(float64(peakHeap.Load())/(1<<20), "heap_peak_MiB")
	mu.Lock()
	defer mu.Unlock()
	b.ReportMetric(first.Sub(start).Seconds(), "first_flush_s")
	steady := 0.0
	if d := last.Sub(first).Seconds(); d > 0 {
		steady = float64(total-firstRows) / d
	}
	return elapsed, steady, p
}

func benchConfig(c *kafkatest.Cluster, ch chstore.Config, group string) sink.Config {
	cfg := testConfig(c, ch)
	cfg.GroupID = c.Group(group)
	// The batch bounds are the production defaults (testConfig shrinks them for tests).
	def := sink.DefaultConfig()
	cfg.BatchRowsMax = envInt("BENCH_BATCH_ROWS_MAX", def.BatchRowsMax)
	cfg.BatchWaitMs = envInt("BENCH_BATCH_WAIT_MS", def.BatchWaitMs)
	cfg.BatchBytesMax = int64(envInt("BENCH_BATCH_BYTES_MAX", int(def.BatchBytesMax)))
	cfg.InsertsParallelMax = envInt("BENCH_INSERTS_PARALLEL_MAX", cfg.InsertsParallelMax)
	cfg.DecodeWorkers = envInt("BENCH_DECODE_WORKERS", cfg.DecodeWorkers)
	return cfg
}

// processCPU is the user + system CPU time this process has used (the sink, its decoders and
// the embedded engine; not the Kafka broker when KAFKA_BROKERS is set).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// envInt lets a benchmark run try other settings (BENCH_* variables) without editing code.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func migrated(b *testing.B) chstore.Config {
	b.Helper()
	ch, _ := chtest.Open(b)
	return ch
}

// BenchmarkInsertThroughput: rows per second from Kafka into the embedded ClickHouse through
// clickhouse-go, 3 × benchRequests messages pre-produced, with the default batch bounds.
// rows/s counts from Ready (group join included); steady_rows/s from the first flush to the
// last; cpu_s is this process's CPU time over the run (sink and embedded engine, not the
// broker); batches is the number of partition batches inserted (each insert has a large
// fixed cost in the engine).
func BenchmarkInsertThroughput(b *testing.B) {
	c := kafkatest.Start(b)
	testevents.Produce(b, c.Brokers, testevents.Stream(b, c.Topics, benchRequests, 1000, time.Now().UTC().Add(-time.Hour)))
	want := int64(3 * benchRequests)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ch := migrated(b)
		// The messages produced above are garbage now: collect them, so that the sink's
		// collector starts from the sink's own heap, as in a sink process.
		runtime.GC()
		b.StartTimer()
		elapsed, steady, p := runUntil(b, benchConfig(c, ch, fmt.Sprint("tp", i)), pipeline.Hooks{}, want)
		b.ReportMetric(float64(want)/elapsed.Seconds(), "rows/s")
		b.ReportMetric(steady, "steady_rows/s")
		b.ReportMetric(float64(p.Stats.Batches.Load()), "batches")
	}
}

// BenchmarkFreshness: events produced at 5,000/s for 10 s while the sink runs; the latency of
// each row is the end of the insert that made it queryable minus the event's time, stamped
// just before it was produced.
func BenchmarkFreshness(b *testing.B) {
	const rate, seconds = 5000, 10
	for i := 0; i < b.N; i++ {
		c := kafkatest.Start(b)
		ch := migrated(b)
		var mu sync.Mutex
		var lat []time.Duration
		hooks := pipeline.Hooks{FlushDone: func(bs []*rows.Batch, at time.Time) {
			mu.Lock()
			defer mu.Unlock()
			for _, x := range bs {
				for j := range x.Usage {
					lat = append(lat, at.Sub(x.Usage[j].Time))
				}
			}
		}}
		cfg := benchConfig(c, ch, "fresh")
		svc, err := sink.New(cfg, quiet)
		if err != nil {
			b.Fatal(err)
		}
		svc.SetHooks(hooks)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- svc.Run(ctx) }()
		<-svc.Ready()
		// Let the consumer join its group before the clock starts.
		testevents.Produce(b, c.Brokers, testevents.Stream(b, c.Topics, 1, 1, time.Now().UTC())[:1])
		for svc.Pipeline().Stats.UsageRows.Load() < 1 {
			time.Sleep(10 * time.Millisecond)
		}
		mu.Lock()
		lat = lat[:0]
		mu.Unlock()
		w := kafkax.NewWriter(c.Brokers, "", kafkax.DefaultWriterConfig)
		tick := time.NewTicker(10 * time.Millisecond)
		perTick := rate / 100
		sent := 0
		t0 := time.Now()
		// Writes are acks=all and synchronous; up to 8 run at once so that a slow
		// acknowledgement does not lower the offered rate.
		inflight := make(chan struct{}, 8)
		var writes sync.WaitGroup
		for n := 0; n < rate*seconds/perTick; n++ {
			<-tick.C
			msgs := make([]kafka.Message, 0, perTick)
			for k := 0; k < perTick/2; k++ {
				s, f, _ := testevents.Request(b, fmt.Sprintf("acct-%d", k%50), fmt.Sprintf("f%d-%d", n, k), time.Now().UTC(), 1000, 10)
				msgs = append(msgs, testevents.Message(b, c.Topics.Events, s), testevents.Message(b, c.Topics.Events, f))
			}
			inflight <- struct{}{}
			writes.Add(1)
			go func() {
				defer func() { <-inflight; writes.Done() }()
				if err := w.WriteMessages(ctx, msgs...); err != nil {
					b.Error(err)
				}
			}()
			sent += len(msgs)
		}
		writes.Wait()
		achieved := float64(sent) / time.Since(t0).Seconds()
		tick.Stop()
		_ = w.Close()
		for svc.Pipeline().Stats.UsageRows.Load() < int64(sent)+1 {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		<-done
		mu.Lock()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		q := func(p float64) float64 { return lat[int(p*float64(len(lat)-1))].Seconds() }
		b.ReportMetric(achieved, "events/s")
		b.ReportMetric(q(0.5), "p50_s")
		b.ReportMetric(q(0.99), "p99_s")
		b.ReportMetric(lat[len(lat)-1].Seconds(), "max_s")
		mu.Unlock()
	}
}

// slowStore delays every insert: a ClickHouse that takes delay per batch.
type slowStore struct {
	rows.Storage
	delay time.Duration
}

func (s slowStore) BatchInsert(ctx context.Context, b *rows.Batch) error {
	time.Sleep(s.delay)
	return s.Storage.BatchInsert(ctx, b)
}

// BenchmarkMemorySlowClickHouse: Go heap growth while draining a 90,000-message backlog
// through a ClickHouse slowed to 300 ms per batch, with 10,000-row / 4 MiB batches. The
// backlog stays in Kafka; the sink holds at most two flushes plus the prefetch queue.
// peak_heap_over_baseline_MiB is the peak heap in use minus the heap in use before the sink
// started (with kfake the baseline includes the in-process broker's copy of the backlog;
// run with KAFKA_BROKERS for a clean figure).
func BenchmarkMemorySlowClickHouse(b *testing.B) {
	const requests = 30_000
	c := kafkatest.Start(b)
	testevents.Produce(b, c.Brokers, testevents.Stream(b, c.Topics, requests, 1000, time.Now().UTC().Add(-time.Hour)))
	want := int64(3 * requests)
	for i := 0; i < b.N; i++ {
		ch := migrated(b)
		cfg := benchConfig(c, ch, fmt.Sprint("mem", i))
		cfg.BatchRowsMax, cfg.BatchBytesMax, cfg.QueueMessagesMax = 10_000, 4<<20, 1000
		runtime.GC()
		var base runtime.MemStats
		runtime.ReadMemStats(&base)
		var peakHeap atomic.Uint64
		stop := make(chan struct{})
		go func() {
			var ms runtime.MemStats
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peakHeap.Load() {
					peakHeap.Store(ms.HeapInuse)
				}
			}
		}()
		hooks := pipeline.Hooks{WrapStorage: func(s rows.Storage) rows.Storage { return slowStore{s, 300 * time.Millisecond} }}
		hooks.FlushDone = func([]*rows.Batch, time.Time) {}
		elapsed, _, p := runUntil(b, cfg, hooks, want)
		close(stop)
		b.ReportMetric(float64(peakHeap.Load())/(1<<20), "peak_heap_MiB")
		b.ReportMetric((float64(peakHeap.Load())-float64(base.HeapInuse))/(1<<20), "peak_heap_over_baseline_MiB")
		b.ReportMetric(float64(p.Stats.BufferedBytesPeak.Load())/(1<<20), "peak_buffered_MiB")
		b.ReportMetric(float64(want)/elapsed.Seconds(), "rows/s")
	}
}
