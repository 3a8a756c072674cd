package follow

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

func source(c *kafkatest.Cluster) Source {
	return Source{Brokers: c.Brokers, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// write writes n records keyed k-<from+i> to topic, acks=all.
func write(t *testing.T, c *kafkatest.Cluster, topic string, from, n int) {
	t.Helper()
	w := kafkax.NewWriter(c.Brokers, topic, kafkax.DefaultWriterConfig)
	defer w.Close()
	var msgs []kafka.Message
	for i := from; i < from+n; i++ {
		msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprint("k-", i)), Value: []byte(fmt.Sprint("v-", i))})
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
}

// seen collects what apply was given.
type seen struct {
	mu  sync.Mutex
	old map[string]bool // value → old
	pos map[int]int64   // partition → last offset, to check the order
	bad []string
}

func newSeen() *seen { return &seen{old: map[string]bool{}, pos: map[int]int64{}} }

func (s *seen) apply(msg kafka.Message, old bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if last, ok := s.pos[msg.Partition]; ok && msg.Offset <= last {
		s.bad = append(s.bad, fmt.Sprintf("partition %d: offset %d after %d", msg.Partition, msg.Offset, last))
	}
	s.pos[msg.Partition] = msg.Offset
	s.old[string(msg.Value)] = old
}

func (s *seen) snapshot() (map[string]bool, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]bool, len(s.old))
	for k, v := range s.old {
		m[k] = v
	}
	return m, append([]string(nil), s.bad...)
}

// TestLogCurrent: the Log reads back what was written within its read-back (old), then what
// is written live (not old), each partition in order; once Current returns, everything
// acknowledged before the call has been applied. Before Run positions it, WaitPosition
// reports false.
func TestLogCurrent(t *testing.T) {
	c := kafkatest.Start(t)
	write(t, c, c.Topics.Events, 0, 20)
	l := NewLog(source(c), c.Topics.Events, 1, time.Hour)
	if l.WaitPosition(0, 0, time.Now()) {
		t.Fatal("WaitPosition true before Run positioned the follower")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	positioned, start := make(chan struct{}), make(chan struct{})
	s := newSeen()
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx, func() { close(positioned) }, start, s.apply) }()
	<-positioned
	write(t, c, c.Topics.Events, 20, 20) // after positioning: read, and live
	close(start)
	if err := l.Current(ctx, time.Now().Add(30*time.Second)); err != nil {
		t.Fatalf("Current: %v", err)
	}
	got, bad := s.snapshot()
	for _, b := range bad {
		t.Error(b)
	}
	for i := 0; i < 40; i++ {
		old, ok := got[fmt.Sprint("v-", i)]
		if !ok {
			t.Fatalf("v-%d not applied when Current returned", i)
		}
		if want := i < 20; old != want {
			t.Errorf("v-%d: old %v, want %v", i, old, want)
		}
	}
	if l.WaitPosition(int32(kafkatest.Partitions), 0, time.Now().Add(time.Second)) {
		t.Error("WaitPosition true for a partition the topic does not have")
	}
	cancel()
	<-done
}

// TestLogReadBackBound: records stamped before the read-back window are not read.
func TestLogReadBackBound(t *testing.T) {
	c := kafkatest.Start(t)
	write(t, c, c.Topics.Events, 0, 10)
	time.Sleep(50 * time.Millisecond) // the records are now older than the read-back
	l := NewLog(source(c), c.Topics.Events, 1, 10*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := make(chan struct{})
	close(start)
	s := newSeen()
	positioned := make(chan struct{})
	go l.Run(ctx, func() { close(positioned) }, start, s.apply)
	<-positioned
	write(t, c, c.Topics.Events, 10, 5)
	if err := l.Current(ctx, time.Now().Add(30*time.Second)); err != nil {
		t.Fatalf("Current: %v", err)
	}
	got, _ := s.snapshot()
	if len(got) != 5 {
		t.Fatalf("applied %d records, want the 5 written after positioning: %v", len(got), got)
	}
}

// TestCompactedLoaded: loaded is called once every record present at start was applied.
func TestCompactedLoaded(t *testing.T) {
	c := kafkatest.Start(t)
	write(t, c, c.Topics.Balances, 0, 30)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	n := 0
	loaded := make(chan int, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		source(c).Compacted(ctx, c.Topics.Balances, func(context.Context, kafka.Message) { mu.Lock(); n++; mu.Unlock() },
			func() { mu.Lock(); loaded <- n; mu.Unlock() })
	}()
	select {
	case got := <-loaded:
		if got != 30 {
			t.Fatalf("loaded after %d records, want 30", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("not loaded after 30s")
	}
	cancel()
	<-done
}
