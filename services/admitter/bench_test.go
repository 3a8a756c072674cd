package admitter

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"runtime/debug"
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
//
// By default it is a closed loop (each caller sends its next admit when the previous one is
// answered). With BENCH_RATE=N it is an open loop: admit i is due at start + i/N, whatever
// the answers; a caller that is late sends at once, and the latency is measured from the due
// time, so that queueing behind slow answers is counted (no coordinated omission).
// BENCH_WORKERS then bounds the connections (use enough that they are rarely all busy).
func BenchmarkAdmitHTTP(b *testing.B) {
	workers := 128
	if v, err := strconv.Atoi(os.Getenv("BENCH_WORKERS")); err == nil && v > 0 {
		workers = v
	}
	var interval time.Duration // open loop: time between due admits; 0 = closed loop
	if v, err := strconv.Atoi(os.Getenv("BENCH_RATE")); err == nil && v > 0 {
		interval = time.Second / time.Duration(v)
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
	if v, err := strconv.ParseBool(os.Getenv("BENCH_FOLLOW_PEERS")); err == nil {
		cfg.FollowPeers = v
	}
	if v, err := strconv.Atoi(os.Getenv("BENCH_WRITERS")); err == nil {
		cfg.Writers = v
	}
	if v := os.Getenv("BENCH_PRODUCER"); v != "" {
		cfg.Producer = v
	}
	if v, err := strconv.ParseInt(os.Getenv("BENCH_LINGER_MS"), 10, 64); err == nil {
		cfg.LingerMs = v
	}
	if v, err := strconv.Atoi(os.Getenv("BENCH_INFLIGHT")); err == nil {
		cfg.InflightMax = v
	}
	if v, err := strconv.Atoi(os.Getenv("BENCH_BATCH_MAX")); err == nil {
		cfg.BatchMax = v
	}
	if v, err := strconv.ParseInt(os.Getenv("BENCH_BATCH_TIMEOUT_MS"), 10, 64); err == nil {
		cfg.BatchTimeoutMs = v
	}
	if v, err := strconv.Atoi(os.Getenv("BENCH_GC_PERCENT")); err == nil {
		cfg.GCPercent = v
	}
	prev := debug.SetGCPercent(100) // read the process's target, restored after the run
	debug.SetGCPercent(prev)
	defer debug.SetGCPercent(prev)
	cfg.ApplyGC() // as cmd/admitter does
	s := start(b, cfg)
	run := fmt.Sprintf("%d", time.Now().UnixNano())
	lat := make([]time.Duration, b.N)
	// fromSend is each admit's latency from the moment its request was written; in the open
	// loop lat also counts how late the generator woke for the due time (timer and scheduling).
	fromSend := make([]time.Duration, b.N)
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
			// A lean HTTP/1.1 keep-alive caller (one connection per worker), so that the load
			// generator leaves the CPU to the admitter and the broker.
			conn, err := net.Dial("tcp", s.Addr())
			if err != nil {
				failed.Add(1)
				return
			}
			defer conn.Close()
			br := bufio.NewReaderSize(conn, 16<<10)
			var body, req []byte
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				body = fmt.Appendf(body[:0], `{"request_id":"b%s-%d","account_id":"bench-%05d","endpoint":"bench.code","estimate":{"tokens_in":1000,"tokens_out":500}}`, run, i, i%accounts)
				req = fmt.Appendf(req[:0], "POST /v1/admit HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s", testSecret, len(body), body)
				st := time.Now()
				sent := st
				if interval > 0 {
					due := t0.Add(time.Duration(i) * interval)
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					}
					st, sent = due, time.Now()
				}
				status, err := roundTrip(conn, br, req)
				if err != nil {
					failed.Add(1)
					return
				}
				lat[i] = time.Since(st)
				fromSend[i] = time.Since(sent)
				if status != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	b.StopTimer()
	// A non-200 (503 when Kafka does not ack within ADMITTER_PUBLISH_TIMEOUT_MS under
	// overload) is counted and reported, not hidden; every 200 must be an open request.
	s.mu.Lock()
	open := s.table.OpenRequests()
	s.mu.Unlock()
	if f := failed.Load(); int64(open) != int64(b.N)-f {
		b.Fatalf("%d open requests after %d admits with %d failures", open, b.N, f)
	}
	b.ReportMetric(float64(failed.Load()), "non200")
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 { return float64(lat[min(int(p*float64(len(lat))), len(lat)-1)]) / 1e6 }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "admits/s")
	b.ReportMetric(pct(0.50), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(pct(0.999), "p99.9_ms")
	if interval > 0 {
		sort.Slice(fromSend, func(i, j int) bool { return fromSend[i] < fromSend[j] })
		b.ReportMetric(float64(fromSend[min(int(0.99*float64(len(fromSend))), len(fromSend)-1)])/1e6, "p99_from_send_ms")
	}
	if mfs, err := s.m.reg.Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() == "tally_admitter_publish_seconds" {
				for _, m := range mf.GetMetric() {
					if h := m.GetHistogram(); h.GetSampleCount() > 0 {
						b.ReportMetric(h.GetSampleSum()/float64(h.GetSampleCount())*1e3, "publish_mean_ms")
						// The upper bound of the bucket holding the 99th percentile.
						for _, bk := range h.GetBucket() {
							if float64(bk.GetCumulativeCount()) >= 0.99*float64(h.GetSampleCount()) {
								b.ReportMetric(bk.GetUpperBound()*1e3, "publish_p99_le_ms")
								break
							}
						}
					}
				}
			}
		}
	}
}

// roundTrip writes one request and reads the status and body (Content-Length framed).
func roundTrip(conn net.Conn, br *bufio.Reader, req []byte) (int, error) {
	if _, err := conn.Write(req); err != nil {
		return 0, err
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 {
		return 0, fmt.Errorf("short status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(h) <= 2 {
			break
		}
		if k, v, ok := bytes.Cut(h, []byte(":")); ok && bytes.EqualFold(k, []byte("Content-Length")) {
			n, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
	_, err = br.Discard(n)
	return status, err
}
