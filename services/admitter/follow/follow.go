// Package follow reads the admitter's Kafka topics: the compacted balances and limits topics
// from their start, then live (Source.Compacted), and the events topic from as far back as a
// request can still be open (Log), keeping per partition the last offset applied, so that a
// caller can wait until the log is read up to a given point. What a message means is the
// caller's (its apply function); this package only reads, retries and positions.
package follow

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/backoff"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Bounds of the followers.
const (
	// FetchBytesMax bounds one fetch.
	FetchBytesMax = 4 << 20
	// FetchWaitMax is how long the broker may hold a fetch open when there is nothing new: it
	// bounds how late a live balance or limit change is seen.
	FetchWaitMax = 50 * time.Millisecond
	// BatchBytesMin is the events-topic follower's fetch MinBytes when nothing waits for it
	// (see the admitter's newPeerLog).
	BatchBytesMin = 256 << 10
	// Retry is the pause before retrying a failed metadata, offsets or fetch request.
	Retry = 500 * time.Millisecond
)

// Source is where the followers read: the brokers over KAFKA_TLS_* (nil = plaintext), with
// a logger for the retried failures.
type Source struct {
	Brokers []string
	TLS     *tls.Config
	Log     *slog.Logger
}

func (src Source) client() *kafka.Client { return kafkax.NewClient(src.Brokers, src.TLS) }

// Compacted loads one compacted topic from its start and then follows it live, calling apply
// for each message in partition order. loaded is called once every partition has been read
// up to the end it had when following began. It returns when ctx ends.
func (src Source) Compacted(ctx context.Context, topic string, apply func(context.Context, kafka.Message), loaded func()) {
	var ends map[int]int64
	for {
		var err error
		if ends, err = Ends(ctx, src.client(), topic); err == nil {
			break
		}
		src.Log.Warn("state topic not reachable; retrying", "topic", topic, "err", err)
		if !backoff.Sleep(ctx, Retry) {
			return
		}
	}
	remaining := make(chan struct{}, len(ends))
	done := make(chan struct{})
	for p, end := range ends {
		go func() {
			defer func() { done <- struct{}{} }()
			src.compactedPartition(ctx, topic, p, end, apply, func() { remaining <- struct{}{} })
		}()
	}
	for range ends {
		select {
		case <-remaining:
		case <-ctx.Done():
		}
	}
	if ctx.Err() == nil {
		loaded()
	}
	for range ends {
		<-done
	}
}

func (src Source) compactedPartition(ctx context.Context, topic string, partition int, end int64,
	apply func(context.Context, kafka.Message), loaded func()) {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: src.Brokers, Topic: topic, Partition: partition,
		MinBytes: 1, MaxBytes: FetchBytesMax, MaxWait: FetchWaitMax, StartOffset: kafka.FirstOffset,
		Dialer: kafkax.Dialer(src.TLS)})
	defer r.Close()
	isLoaded := false
	if end <= 0 {
		loaded()
		isLoaded = true
	}
	for {
		msg, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			src.Log.Warn("state topic read failed; retrying", "topic", topic, "partition", partition, "err", err)
			if !backoff.Sleep(ctx, Retry) {
				return
			}
			continue
		}
		apply(ctx, msg)
		if !isLoaded && msg.Offset+1 >= end {
			loaded()
			isLoaded = true
		}
	}
}

// Ends returns each partition's end offset (the next offset to be written).
func Ends(ctx context.Context, c *kafka.Client, topic string) (map[int]int64, error) {
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata %s: %w", topic, err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) == 0 {
		return nil, fmt.Errorf("metadata %s: topic missing (%v)", topic, md.Topics)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	lo, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("list offsets %s: %w", topic, err)
	}
	ends := map[int]int64{}
	for _, po := range lo.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("list offsets %s/%d: %w", topic, po.Partition, po.Error)
		}
		ends[po.Partition] = po.LastOffset
	}
	return ends, nil
}

// Log follows the events topic: it reads back, at start-up, as far as ReadBack before now,
// then every partition live, and keeps the last offset it applied per partition.
type Log struct {
	src      Source
	topic    string
	bytesMin int
	readBack time.Duration
	pos      atomic.Pointer[[]atomic.Int64] // per partition: last offset applied; nil until positioned
	ends     *kafka.Client                  // end offsets for Current
}

// NewLog returns the follower of topic: fetches wait for bytesMin (or FetchWaitMax), and the
// start-up read-back covers readBack.
func NewLog(src Source, topic string, bytesMin int, readBack time.Duration) *Log {
	return &Log{src: src, topic: topic, bytesMin: bytesMin, readBack: readBack, ends: src.client()}
}

// Run positions the follower (each partition at its first record stamped within the
// read-back, or its end), calls positioned (every event written from then on will be read),
// waits for start to close, then reads every partition, calling apply for each message in
// partition order; old says the message was written before Run began. It retries what
// fails and returns when ctx ends.
func (l *Log) Run(ctx context.Context, positioned func(), start <-chan struct{}, apply func(msg kafka.Message, old bool)) {
	c := l.src.client()
	var ends, starts map[int]int64
	for {
		var err error
		if ends, err = Ends(ctx, c, l.topic); err == nil {
			if starts, err = l.readBackFrom(ctx, c, ends); err == nil {
				break
			}
		}
		if !backoff.Sleep(ctx, Retry) {
			return
		}
	}
	maxP := 0
	for p := range ends {
		maxP = max(maxP, p)
	}
	pos := make([]atomic.Int64, maxP+1)
	for p := range ends {
		pos[p].Store(starts[p] - 1)
	}
	l.pos.Store(&pos)
	positioned()
	select {
	case <-start:
	case <-ctx.Done():
		return
	}
	done := make(chan struct{}, len(ends))
	for p, end := range ends {
		go func() {
			defer func() { done <- struct{}{} }()
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: l.src.Brokers, Topic: l.topic, Partition: p,
				MinBytes: l.bytesMin, MaxBytes: FetchBytesMax, MaxWait: FetchWaitMax, Dialer: kafkax.Dialer(l.src.TLS)})
			defer r.Close()
			if err := r.SetOffset(starts[p]); err != nil {
				l.src.Log.Error("peer follower: set offset", "partition", p, "err", err)
				return
			}
			for {
				msg, err := r.FetchMessage(ctx)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					l.src.Log.Warn("peer follower: read failed; retrying", "partition", p, "err", err)
					if !backoff.Sleep(ctx, Retry) {
						return
					}
					continue
				}
				apply(msg, msg.Offset < end)
				pos[p].Store(msg.Offset)
			}
		}()
	}
	for range ends {
		<-done
	}
}

// readBackFrom returns, per partition, the first offset whose record is stamped within the
// read-back before now, or the end offset when there is none.
func (l *Log) readBackFrom(ctx context.Context, c *kafka.Client, ends map[int]int64) (map[int]int64, error) {
	at := time.Now().Add(-l.readBack)
	starts := make(map[int]int64, len(ends))
	var reqs []kafka.OffsetRequest
	for p, end := range ends {
		starts[p] = end
		reqs = append(reqs, kafka.TimeOffsetOf(p, at))
	}
	lo, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{l.topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("offsets for times %s: %w", l.topic, err)
	}
	for _, po := range lo.Topics[l.topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("offsets for times %s/%d: %w", l.topic, po.Partition, po.Error)
		}
		for off := range po.Offsets { // none when no record is that recent
			if off >= 0 && off < starts[po.Partition] {
				starts[po.Partition] = off
			}
		}
	}
	return starts, nil
}

// WaitPosition waits until the follower has applied partition up to offset, or until
// deadline; it reports whether it got there (never, before Run positioned it).
func (l *Log) WaitPosition(partition int32, offset int64, deadline time.Time) bool {
	pp := l.pos.Load()
	if pp == nil || int(partition) >= len(*pp) {
		return false
	}
	pos := &(*pp)[partition]
	for pos.Load() < offset {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
	return true
}

// ErrBehind is Current's error when the follower did not reach the end offsets in time.
var ErrBehind = errors.New("follow: events log not read up to date")

// Current waits until the follower has applied every partition up to its end offset as of
// this call, so that anything acknowledged before the call has been applied; it fails with
// the offsets request's error, or ErrBehind at deadline.
func (l *Log) Current(ctx context.Context, deadline time.Time) error {
	cctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ends, err := Ends(cctx, l.ends, l.topic)
	if err != nil {
		return err
	}
	for p, end := range ends {
		if end > 0 && !l.WaitPosition(int32(p), end-1, deadline) {
			return ErrBehind
		}
	}
	return nil
}
