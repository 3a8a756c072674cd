package produce

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// testConfig is the eager producer's configuration on c's events topic with the
// admitter's defaults; ADMITTER_INFLIGHT_MAX and ADMITTER_LINGER_MS run the suite on other
// settings.
func testConfig(c *kafkatest.Cluster) Config {
	cfg := Config{Kind: Eager, Brokers: c.Brokers, Topic: c.Topics.Events, Source: "admitter/test",
		PublishTimeout: 3 * time.Second, Linger: time.Millisecond, InflightMax: 1, BufferMax: 20_000}
	if v, err := strconv.Atoi(os.Getenv("ADMITTER_INFLIGHT_MAX")); err == nil {
		cfg.InflightMax = v
	}
	if v, err := strconv.ParseInt(os.Getenv("ADMITTER_LINGER_MS"), 10, 64); err == nil {
		cfg.Linger = time.Duration(v) * time.Millisecond
	}
	return cfg
}

// newTestProducer runs an eagerProducer on c's events topic until the test ends.
func newTestProducer(t *testing.T, c *kafkatest.Cluster, tune func(*Config)) *eagerProducer {
	t.Helper()
	cfg := testConfig(c)
	if tune != nil {
		tune(&cfg)
	}
	p := newEagerProducer(cfg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.close(ctx)
	})
	return p
}

func publish(t *testing.T, p *eagerProducer, key, value string, timeout time.Duration) (int32, int64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return p.Publish(ctx, key, []byte(value))
}

func partitionList(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// TestEagerPartitionsLikeWriter: every key lands on the partition kafka.Murmur2Balancer
// picks, for many keys and partition counts, and, on the broker, on the partition a kafka-go
// Writer with Murmur2Balancer (kafkax.NewWriter, as the other Tally producers) wrote it to.
func TestEagerPartitionsLikeWriter(t *testing.T) {
	p := &eagerProducer{}
	for _, n := range []int{1, 2, 3, 4, 7, 12, 64} {
		p.parts = partitionList(n)
		for i := 0; i < 20_000; i++ {
			key := fmt.Sprintf("acct-%d", i)
			want := kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: []byte(key)}, p.parts...)
			if got := p.partitionOf([]byte(key)); got != want {
				t.Fatalf("%d partitions, key %q: partition %d, Murmur2Balancer %d", n, key, got, want)
			}
		}
	}

	c := kafkatest.Start(t)
	ep := newTestProducer(t, c, nil)
	w := kafkax.NewWriter(c.Brokers, c.Topics.Events, kafkax.DefaultWriterConfig)
	defer w.Close()
	var mu sync.Mutex
	byWriter := map[string]int{}
	w.Completion = func(msgs []kafka.Message, err error) {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			if err == nil {
				byWriter[string(m.Key)] = m.Partition
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var msgs []kafka.Message
	for i := 0; i < 200; i++ {
		msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprintf("acct-%d", i)), Value: []byte("w")})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		key := fmt.Sprintf("acct-%d", i)
		part, _, err := publish(t, ep, key, "e", 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		want, ok := byWriter[key]
		mu.Unlock()
		if !ok || int(part) != want {
			t.Fatalf("key %q: eager partition %d, Writer partition %d (%v)", key, part, want, ok)
		}
	}
}

// TestEagerOffsetsInOrder: concurrent publishes batched into shared requests each get the
// offset their own record was written at (base offset + index), and one caller's
// successive records on a key get increasing offsets; with one request in flight per broker
// (the default), with 4, and with a linger.
func TestEagerOffsetsInOrder(t *testing.T) {
	for _, tc := range []struct {
		name             string
		inflight, linger int64
	}{{"inflight1", 1, 0}, {"inflight4", 4, 0}, {"linger2ms", 1, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			testEagerOffsets(t, func(c *Config) { c.InflightMax, c.Linger = int(tc.inflight), time.Duration(tc.linger)*time.Millisecond })
		})
	}
}

func testEagerOffsets(t *testing.T, tune func(*Config)) {
	c := kafkatest.Start(t)
	p := newTestProducer(t, c, tune)
	type pos struct {
		part int32
		off  int64
	}
	var mu sync.Mutex
	got := map[string]pos{}
	var wg sync.WaitGroup
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := int64(-1)
			key := fmt.Sprintf("k-%d", g%8)
			for i := 0; i < 40; i++ {
				v := fmt.Sprintf("v-%d-%d", g, i)
				part, off, err := publish(t, p, key, v, 10*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				if off <= last {
					t.Errorf("%s: offset %d after %d", v, off, last)
				}
				last = off
				mu.Lock()
				got[v] = pos{part, off}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// Read every partition back: the record at each reported position is that publish's.
	seen := 0
	for part := 0; part < kafkatest.Partitions; part++ {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: c.Brokers, Topic: c.Topics.Events, Partition: part,
			MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 50 * time.Millisecond})
		want := 0
		for _, ps := range got {
			if int(ps.part) == part {
				want++
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		for n := 0; n < want; n++ {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				t.Fatalf("partition %d: %v after %d of %d", part, err, n, want)
			}
			ps, ok := got[string(m.Value)]
			if !ok || int(ps.part) != part || ps.off != m.Offset {
				t.Fatalf("record %q at %d/%d, reported %v (%v)", m.Value, part, m.Offset, ps, ok)
			}
			if len(m.Headers) != 1 || m.Headers[0].Key != HeaderSource || string(m.Headers[0].Value) != "admitter/test" {
				t.Fatalf("headers %v", m.Headers)
			}
			seen++
		}
		cancel()
		r.Close()
	}
	if seen != len(got) {
		t.Fatalf("read %d of %d records", seen, len(got))
	}
}

// TestEagerBufferBound: with ADMITTER_PRODUCE_BUFFER_MAX records held (here 1, waiting on a
// broker that never answers), the next Publish waits for room until its context ends, then
// fails with the context's error.
func TestEagerBufferBound(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accepts and never answers
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	p := newEagerProducer(Config{Kind: Eager, Brokers: []string{ln.Addr().String()}, Topic: "t.events",
		Source: "admitter/test", PublishTimeout: 500 * time.Millisecond, Linger: time.Millisecond, InflightMax: 1, BufferMax: 1})
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		p.close(ctx)
	}()
	first := make(chan error, 1)
	go func() { _, _, err := publish(t, p, "a", "1", 2*time.Second); first <- err }()
	for len(p.room) == 0 {
		time.Sleep(time.Millisecond)
	}
	t0 := time.Now()
	_, _, err = publish(t, p, "b", "2", 100*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "buffer full") {
		t.Fatalf("publish beyond the buffer: %v", err)
	}
	if d := time.Since(t0); d < 90*time.Millisecond {
		t.Fatalf("failed after %v, before its context ended", d)
	}
	if err := <-first; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publish to a silent broker: %v", err)
	}
	// The held record's slot is freed once its context ended.
	deadline := time.Now().Add(5 * time.Second)
	for len(p.room) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the expired record still holds its buffer slot")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestEagerExpiredRecordNeverSent: a record queued behind a slow in-flight request whose
// context ends before it could be sent is never written: the next record on its key lands
// right after the slow one.
func TestEagerExpiredRecordNeverSent(t *testing.T) {
	c := kafkatest.Start(t)
	if c.Real {
		t.Skip("needs the embedded broker to delay a produce request")
	}
	p := newTestProducer(t, c, nil)
	if _, _, err := publish(t, p, "k", "warm-up", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	var delayed atomic.Bool
	c.Fake.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		if delayed.CompareAndSwap(false, true) {
			time.Sleep(400 * time.Millisecond)
		}
		return nil, nil, false
	})
	type res struct {
		off int64
		err error
	}
	slow := make(chan res, 1)
	go func() { _, off, err := publish(t, p, "k", "slow", 10*time.Second); slow <- res{off, err} }()
	for !delayed.Load() {
		time.Sleep(time.Millisecond)
	}
	if _, _, err := publish(t, p, "k", "expired", 100*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("record queued behind a 400 ms request with a 100 ms context: %v", err)
	}
	s := <-slow
	if s.err != nil {
		t.Fatal(s.err)
	}
	_, off, err := publish(t, p, "k", "next", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if off != s.off+1 {
		t.Fatalf("next record at %d, slow one at %d: the expired record was written", off, s.off)
	}
}

// TestEagerRecoversAfterTopicRecreated: the events topic is deleted and re-created with
// another partition count; the producer refreshes its metadata by itself and places keys
// with Murmur2Balancer over the new partition list.
func TestEagerRecoversAfterTopicRecreated(t *testing.T) {
	c := kafkatest.Start(t)
	p := newTestProducer(t, c, nil)
	if _, _, err := publish(t, p, "acct-1", "before", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl := kafkax.NewClient(c.Brokers, nil)
	if _, err := cl.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{c.Topics.Events}}); err != nil {
		t.Fatal(err)
	}
	const parts = 6
	for { // deletion is asynchronous on a real broker: create until it is accepted
		res, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
			{Topic: c.Topics.Events, NumPartitions: parts, ReplicationFactor: 1}}})
		if err == nil && res.Errors[c.Topics.Events] == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("re-create: %v %v", err, res)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Publishes succeed throughout (old partition numbers still exist); within a few
	// seconds (the transport's metadata refresh) keys are placed over 6 partitions.
	newPart := func(key string) int {
		return kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: []byte(key)}, partitionList(parts)...)
	}
	probe := ""
	for i := 0; probe == ""; i++ {
		key := fmt.Sprintf("probe-%d", i)
		if newPart(key) != (kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(key)}, partitionList(kafkatest.Partitions)...) {
			probe = key
		}
	}
	for {
		part, _, err := publish(t, p, probe, "after", 3*time.Second)
		if err == nil && int(part) == newPart(probe) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("publish after re-creation: partition %d, %v", part, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < 50; i++ {
		key := fmt.Sprintf("acct-%d", i)
		part, _, err := publish(t, p, key, "after", 10*time.Second)
		if err != nil {
			t.Fatalf("publish after re-creation: %v", err)
		}
		if int(part) != newPart(key) {
			t.Fatalf("key %q on partition %d after re-creation with %d partitions, want %d", key, part, parts, newPart(key))
		}
	}
}
