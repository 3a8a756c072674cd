package admitter

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// BenchmarkAdmitHTTP drives POST /v1/admit over HTTP (keep-alive) with BENCH_WORKERS
// concurrent callers (default 128) spread over 10,000 accounts, each admit publishing its
// request.started with acks=all. It reports admits/s and the p50/p99/p99.9 latency seen by
// the callers. Run it against real Kafka with KAFKA_BROKERS=127.0.0.1:9092.
func BenchmarkAdmitHTTP(b *testing.B) {
	workers := 128
	if v, err := strconv.Atoi(os.Getenv("BENCH_WORKERS")); err == nil && v > 0 {
		workers = v
	}
	c := kafkatest.Start(b)
	const accounts = 10_000
	var seeds []events.Data
	for i := 0; i < accounts; i++ {
		seeds = append(seeds, bal(fmt.Sprintf("bench-%05d", i), "wide", 1e15))
	}
	seed(b, c, seeds...)
	cfg := testConfig(b, c)
	cfg.IdempotencyMax = 2_000_000
	if v, err := strconv.ParseInt(os.Getenv("BENCH_BATCH_TIMEOUT_MS"), 10, 64); err == nil {
		cfg.BatchTimeoutMs = v
	}
	s := start(b, cfg)
	tr := &http.Transport{MaxIdleConns: workers, MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	run := fmt.Sprintf("%d", time.Now().UnixNano())
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var body bytes.Buffer
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				body.Reset()
				fmt.Fprintf(&body, `{"request_id":"b%s-%d","account_id":"bench-%05d","endpoint":"bench.code","estimate":{"tokens_in":1000,"tokens_out":500}}`, run, i, i%accounts)
				req, _ := http.NewRequest(http.MethodPost, s.url+"/v1/admit", &body)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+testSecret)
				st := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat[i] = time.Since(st)
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	b.StopTimer()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d admits not allowed", f, b.N)
	}
	s.mu.Lock()
	open := s.table.OpenRequests()
	s.mu.Unlock()
	if open < b.N {
		b.Fatalf("%d open requests after %d admits", open, b.N)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 { return float64(lat[min(int(p*float64(len(lat))), len(lat)-1)]) / 1e6 }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "admits/s")
	b.ReportMetric(pct(0.50), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(pct(0.999), "p99.9_ms")
	if mfs, err := s.m.reg.Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() == "tally_admitter_publish_seconds" {
				for _, m := range mf.GetMetric() {
					if h := m.GetHistogram(); h.GetSampleCount() > 0 {
						b.ReportMetric(h.GetSampleSum()/float64(h.GetSampleCount())*1e3, "publish_mean_ms")
					}
				}
			}
		}
	}
}
