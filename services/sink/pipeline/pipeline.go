// Package pipeline is the sink's Kafka edge: it consumes the events and journal topics with a
// consumer group, decodes every message, dead-letters what it cannot read, batches rows per
// topic partition (bounded by rows, bytes and time), records each batch's range, inserts it
// through rows.Storage with retries, and commits offsets only after the insert succeeded.
//
// Exactly-once into ClickHouse: a batch is one contiguous offset range of one partition and
// its insert_deduplication_token is a function of that range. Before inserting, the ranges
// are recorded (Intents). A sink restarted after inserting but before committing meets those
// offsets again, re-forms exactly the recorded ranges, and re-sends them with the same
// tokens: ClickHouse keeps the first copy and drops the second, in the tables and in the
// rollups fed by materialized views.
package pipeline

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Intents records and recalls batch ranges (chstore.Store implements it).
type Intents interface {
	RecordIntents(ctx context.Context, group string, rs []rows.Range) error
	PendingIntents(ctx context.Context, group, topic string, partition int32, from int64, limit int) ([]rows.Range, error)
}

// Config bounds the pipeline. The root package fills it from the SINK_* settings.
type Config struct {
	Brokers         []string
	Topics          []string // consumed topics: events and journal
	DeadLetterTopic string
	GroupID         string
	// BatchRowsMax, BatchBytesMax and BatchWait bound the rows buffered before a flush: the
	// first reached triggers it. BatchBytesMax counts source message bytes.
	BatchRowsMax  int
	BatchBytesMax int64
	BatchWait     time.Duration
	// FetchBytesMax bounds one fetch response per partition; QueueMessagesMax bounds the
	// messages prefetched ahead of the batcher (kafka-go's queue and the hand-off channel).
	FetchBytesMax    int
	QueueMessagesMax int
	// RetryBackoffMin/Max bound the exponential backoff between attempts of an insert, an
	// intent record or a dead-letter write; RetryAttemptsMax bounds the attempts, after which
	// Run returns the error (nothing is committed, so a restart redelivers).
	RetryBackoffMin  time.Duration
	RetryBackoffMax  time.Duration
	RetryAttemptsMax int
	// IntentsMax bounds the recorded ranges recalled per partition after a restart.
	IntentsMax int
	// DecodeWorkers decode messages in parallel (order is kept per partition).
	DecodeWorkers int
	// InsertsParallelMax bounds the partition batches of one flush inserted at once.
	InsertsParallelMax int
	// TLS is the KAFKA_TLS_* client config of the reader and the dead-letter writer (nil =
	// plaintext).
	TLS *tls.Config
}

// Validate checks the bounds.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 || len(c.Topics) == 0 || c.DeadLetterTopic == "" || c.GroupID == "" {
		errs = append(errs, errors.New("pipeline: brokers, topics, dead-letter topic and group are required"))
	}
	if c.BatchRowsMax < 1 || c.BatchBytesMax < 1 || c.BatchWait <= 0 || c.FetchBytesMax < 1 || c.QueueMessagesMax < 1 ||
		c.RetryBackoffMin <= 0 || c.RetryBackoffMax < c.RetryBackoffMin || c.RetryAttemptsMax < 1 || c.IntentsMax < 1 ||
		c.DecodeWorkers < 1 || c.InsertsParallelMax < 1 {
		errs = append(errs, fmt.Errorf("pipeline: every bound must be positive: %+v", c))
	}
	return errors.Join(errs...)
}

// Stats are the pipeline's counters, read by the metrics and by tests.
type Stats struct {
	Messages, UsageRows, LedgerRows, DeadLetters, Batches, ReplayedBatches atomic.Int64
	InsertErrors, CommitErrors                                             atomic.Int64
	// LastFlushUnixMs is the time of the last successful flush.
	LastFlushUnixMs atomic.Int64
	// BufferedBytes is the source bytes currently buffered in batches; BufferedBytesPeak its
	// highest value.
	BufferedBytes, BufferedBytesPeak atomic.Int64
}

// Hooks let tests stop the pipeline at a chosen point. Nil hooks do nothing.
type Hooks struct {
	// AfterInsert runs after a flush's inserts succeeded and before its offsets are committed;
	// an error ends Run without committing (a simulated crash).
	AfterInsert func() error
	// FlushDone observes each flush's inserted batches and the time it ended; it must not
	// keep them.
	FlushDone func(batches []*rows.Batch, at time.Time)
	// WrapStorage wraps the storage (a benchmark slows ClickHouse down with it).
	WrapStorage func(rows.Storage) rows.Storage
}

// Pipeline is one consumer-group member.
type Pipeline struct {
	cfg     Config
	store   rows.Storage
	intents Intents
	log     *slog.Logger
	hooks   Hooks
	Stats   Stats
	healthy atomic.Bool
}

// New validates cfg and returns a pipeline.
func New(cfg Config, store rows.Storage, intents Intents, log *slog.Logger, hooks Hooks) (*Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	if hooks.WrapStorage != nil {
		store = hooks.WrapStorage(store)
	}
	return &Pipeline{cfg: cfg, store: store, intents: intents, log: log, hooks: hooks}, nil
}

// Healthy reports whether Run is going and its last flush did not fail.
func (p *Pipeline) Healthy() bool { return p.healthy.Load() }

type partKey struct {
	topic     string
	partition int32
}

// partState is one partition's batch in progress and its recovery state.
type partState struct {
	cur    *rows.Batch
	next   int64        // expected next offset; -1 = unknown
	replay []rows.Range // recorded ranges not yet re-formed, in offset order
	known  bool         // replay was loaded for this run of offsets
}

// fetched is one message on its way from the fetcher through a decode worker to the batcher.
// The batcher takes them in fetch order and waits on done, so decoding runs in parallel while
// every partition's order is kept.
type fetched struct {
	msg    kafka.Message
	err    error
	u      *rows.Usage
	l      *rows.Ledger
	reason string // non-empty: dead-letter with this reason
	done   chan struct{}
}

func decodeOne(f *fetched) {
	defer close(f.done)
	m := f.msg
	ev, err := events.Decode(m.Value)
	if err != nil {
		f.reason = err.Error()
		return
	}
	u, lg, ok := rows.FromEvent(ev, rows.Position{Topic: m.Topic, Partition: int32(m.Partition), Offset: m.Offset})
	if !ok {
		f.reason = fmt.Sprintf("sink: event type %s is not stored from topic %s", ev.Type, m.Topic)
		return
	}
	f.u, f.l = u, lg
}

// Run consumes until ctx is cancelled (returns nil) or an unrecoverable error.
func (p *Pipeline) Run(ctx context.Context) error {
	p.healthy.Store(true)
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:     p.cfg.Brokers,
		GroupID:     p.cfg.GroupID,
		GroupTopics: p.cfg.Topics,
		MinBytes:    1,
		MaxBytes:    p.cfg.FetchBytesMax,
		// A short broker wait keeps freshness; the batcher does the batching.
		MaxWait:       50 * time.Millisecond,
		QueueCapacity: p.cfg.QueueMessagesMax,
		// 0 = synchronous commits: CommitMessages returns once the broker has the offsets,
		// which the sink calls only after the insert succeeded.
		CommitInterval: 0,
		// A new group starts at the beginning: every event must reach ClickHouse.
		StartOffset:       kafka.FirstOffset,
		HeartbeatInterval: 3 * time.Second,
		SessionTimeout:    30 * time.Second,
		RebalanceTimeout:  30 * time.Second,
		ReadBackoffMin:    50 * time.Millisecond,
		ReadBackoffMax:    time.Second,
		MaxAttempts:       3,
		Dialer:            kafkax.Dialer(p.cfg.TLS),
		ErrorLogger: kafka.LoggerFunc(func(msg string, a ...any) {
			p.log.Warn("kafka reader", "detail", fmt.Sprintf(msg, a...))
		}),
	})
	defer r.Close()
	dwc := kafkax.DefaultWriterConfig
	dwc.TLS = p.cfg.TLS
	dlq := kafkax.NewWriter(p.cfg.Brokers, "", dwc)
	defer dlq.Close()

	fctx, stop := context.WithCancel(ctx)
	defer stop()
	// The fetcher hands each message to the decode workers and, in the same order, to the
	// batcher; both channels are bounded by QueueMessagesMax.
	ordered := make(chan *fetched, p.cfg.QueueMessagesMax)
	work := make(chan *fetched, p.cfg.QueueMessagesMax)
	var workers sync.WaitGroup
	for i := 0; i < p.cfg.DecodeWorkers; i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for f := range work {
				decodeOne(f)
			}
		}()
	}
	defer workers.Wait()
	go func() {
		defer close(work)
		for {
			m, err := r.FetchMessage(fctx)
			f := &fetched{msg: m, err: err, done: make(chan struct{})}
			if err != nil {
				close(f.done)
			}
			select {
			case ordered <- f:
			case <-fctx.Done():
				return
			}
			if err != nil {
				return
			}
			select {
			case work <- f:
			case <-fctx.Done():
				return
			}
		}
	}()
	l := &loop{p: p, r: r, dlq: dlq, parts: map[partKey]*partState{}}
	defer stop()
	return l.run(ctx, ordered)
}

type loop struct {
	p         *Pipeline
	r         *kafka.Reader
	dlq       *kafka.Writer
	parts     map[partKey]*partState
	ready     []*rows.Batch // sealed batches awaiting the next flush
	replayed  map[*rows.Batch]bool
	rowsN     int
	bytesN    int64
	deadline  time.Time
	flushTick *time.Timer
	// inflight yields the result of the flush being inserted, nil when none is.
	inflight chan error
}

func (l *loop) run(ctx context.Context, ch <-chan *fetched) error {
	l.flushTick = time.NewTimer(time.Hour)
	l.flushTick.Stop()
	l.replayed = map[*rows.Batch]bool{}
	defer func() { _ = l.waitInflight() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-l.inflight:
			l.inflight = nil
			if err != nil {
				return ctx2nil(ctx, err)
			}
		case f := <-ch:
			if f.err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("pipeline: fetch: %w", f.err)
			}
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil
			}
			if err := l.handle(ctx, f); err != nil {
				return ctx2nil(ctx, err)
			}
			if l.rowsN >= l.p.cfg.BatchRowsMax || l.bytesN >= l.p.cfg.BatchBytesMax {
				if err := l.flush(ctx); err != nil {
					return ctx2nil(ctx, err)
				}
			}
		case <-l.flushTick.C:
			if err := l.flush(ctx); err != nil {
				return ctx2nil(ctx, err)
			}
		}
	}
}

func ctx2nil(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// waitInflight waits for the flush being inserted and returns its error.
func (l *loop) waitInflight() error {
	if l.inflight == nil {
		return nil
	}
	err := <-l.inflight
	l.inflight = nil
	return err
}

// handle routes one decoded message into its partition's batch.
func (l *loop) handle(ctx context.Context, f *fetched) error {
	m := f.msg
	l.p.Stats.Messages.Add(1)
	key := partKey{m.Topic, int32(m.Partition)}
	st := l.parts[key]
	if st == nil {
		st = &partState{next: -1}
		l.parts[key] = st
	}
	if st.next != m.Offset || !st.known {
		// First sight of the partition, or a jump (rebalance, restart of the fetch): the
		// unflushed batch may be redelivered, so drop it, and recall recorded ranges.
		if st.cur != nil && st.cur.Messages > 0 {
			l.rowsN -= st.cur.Rows()
			l.bytesN -= st.cur.Bytes
			l.p.log.Warn("offset jump: dropping unflushed batch", "range", st.cur.Range.String(), "offset", m.Offset)
		}
		st.cur = nil
		rs, err := retry(ctx, l.p, "recall intents", func() ([]rows.Range, error) {
			return l.p.intents.PendingIntents(ctx, l.p.cfg.GroupID, m.Topic, int32(m.Partition), m.Offset, l.p.cfg.IntentsMax)
		})
		if err != nil {
			return err
		}
		st.replay, st.known = rs, true
	}
	st.next = m.Offset + 1
	// Passed a recorded range whose last message never came back (should not happen on an
	// append-only topic): seal what was re-formed under the recorded range.
	for len(st.replay) > 0 && m.Offset > st.replay[0].Last {
		l.sealReplay(st, st.replay[0])
	}
	u, lg := f.u, f.l
	if f.reason != "" {
		if err := l.deadLetter(ctx, m, f.reason); err != nil {
			return err
		}
	}
	if st.cur == nil {
		st.cur = &rows.Batch{}
	}
	pos := rows.Position{Topic: m.Topic, Partition: int32(m.Partition), Offset: m.Offset}
	st.cur.Add(pos, len(m.Value)+len(m.Key), u, lg)
	if u != nil || lg != nil {
		l.rowsN++
	}
	l.bytesN += int64(len(m.Value) + len(m.Key))
	l.p.Stats.BufferedBytes.Store(l.bytesN)
	if l.bytesN > l.p.Stats.BufferedBytesPeak.Load() {
		l.p.Stats.BufferedBytesPeak.Store(l.bytesN)
	}
	if len(st.replay) > 0 {
		head := st.replay[0]
		switch {
		case m.Offset == head.Last:
			l.sealReplay(st, head)
		case m.Offset == head.First-1:
			// A new batch must not run into a recorded range.
			l.seal(st)
		}
	}
	if l.deadline.IsZero() {
		l.deadline = time.Now().Add(l.p.cfg.BatchWait)
		l.flushTick.Reset(l.p.cfg.BatchWait)
	}
	return nil
}

// deadLetter publishes m to the dead-letter topic with the reason, retrying.
func (l *loop) deadLetter(ctx context.Context, m kafka.Message, reason string) error {
	_, err := retry(ctx, l.p, "dead-letter", func() (struct{}, error) {
		return struct{}{}, kafkax.DeadLetter(ctx, l.dlq, l.p.cfg.DeadLetterTopic, "sink", m, reason)
	})
	if err != nil {
		return err
	}
	l.p.Stats.DeadLetters.Add(1)
	l.p.log.Warn("dead-lettered", "topic", m.Topic, "partition", m.Partition, "offset", m.Offset, "reason", reason)
	return nil
}

func (l *loop) seal(st *partState) {
	if st.cur != nil && st.cur.Messages > 0 {
		l.ready = append(l.ready, st.cur)
	}
	st.cur = nil
}

// sealReplay seals the current batch under the recorded range, so it carries the recorded
// token even if its first messages were already committed.
func (l *loop) sealReplay(st *partState, r rows.Range) {
	if st.cur != nil && st.cur.Messages > 0 {
		st.cur.Range = r
		l.replayed[st.cur] = true
		l.ready = append(l.ready, st.cur)
	}
	st.cur = nil
	st.replay = st.replay[1:]
}

// flush seals every partition's batch and hands the sealed batches to an inserter. One
// flush is inserted at a time while the next batch fills: memory holds at most two flushes'
// worth of rows, and a slow ClickHouse makes flush wait here, which stops consumption.
func (l *loop) flush(ctx context.Context) error {
	l.flushTick.Stop()
	l.deadline = time.Time{}
	for _, st := range l.parts {
		if len(st.replay) == 0 {
			l.seal(st)
		}
		// A partition still re-forming a recorded range keeps its batch until the range is
		// complete: flushing it early would change its token.
	}
	if len(l.ready) == 0 {
		if l.rowsN > 0 || l.bytesN > 0 {
			// Only replay batches are buffered: wait for the rest of their ranges.
			l.deadline = time.Now().Add(l.p.cfg.BatchWait)
			l.flushTick.Reset(l.p.cfg.BatchWait)
		}
		return nil
	}
	if err := l.waitInflight(); err != nil {
		return err
	}
	job := &flushJob{batches: append([]*rows.Batch(nil), l.ready...), replayed: map[*rows.Batch]bool{}}
	for _, b := range job.batches {
		job.replayed[b] = l.replayed[b]
		l.rowsN -= b.Rows()
		l.bytesN -= b.Bytes
	}
	l.ready = l.ready[:0]
	clear(l.replayed)
	l.p.Stats.BufferedBytes.Store(l.bytesN)
	l.inflight = make(chan error, 1)
	go func(ch chan error) { ch <- l.insert(ctx, job) }(l.inflight)
	return nil
}

type flushJob struct {
	batches  []*rows.Batch
	replayed map[*rows.Batch]bool
}

// insert records intents for the new batches, inserts every batch (InsertsParallelMax at a
// time), then commits their offsets.
func (l *loop) insert(ctx context.Context, job *flushJob) error {
	var fresh []rows.Range
	for _, b := range job.batches {
		if !job.replayed[b] {
			fresh = append(fresh, b.Range)
		}
	}
	if len(fresh) > 0 {
		if _, err := retry(ctx, l.p, "record intents", func() (struct{}, error) {
			return struct{}{}, l.p.intents.RecordIntents(ctx, l.p.cfg.GroupID, fresh)
		}); err != nil {
			l.p.healthy.Store(false)
			return err
		}
	}
	sem := make(chan struct{}, l.p.cfg.InsertsParallelMax)
	errs := make([]error, len(job.batches))
	var wg sync.WaitGroup
	for i, b := range job.batches {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			_, errs[i] = retry(ctx, l.p, "insert "+b.Range.String(), func() (struct{}, error) {
				err := l.p.store.BatchInsert(ctx, b)
				if err != nil {
					l.p.Stats.InsertErrors.Add(1)
				}
				return struct{}{}, err
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		l.p.healthy.Store(false)
		return err
	}
	commits := make([]kafka.Message, 0, len(job.batches))
	for _, b := range job.batches {
		l.p.Stats.UsageRows.Add(int64(len(b.Usage)))
		l.p.Stats.LedgerRows.Add(int64(len(b.Ledger)))
		l.p.Stats.Batches.Add(1)
		if job.replayed[b] {
			l.p.Stats.ReplayedBatches.Add(1)
		}
		commits = append(commits, kafka.Message{Topic: b.Range.Topic, Partition: int(b.Range.Partition), Offset: b.Range.Last})
	}
	if h := l.p.hooks.AfterInsert; h != nil {
		if err := h(); err != nil {
			return err
		}
	}
	if err := l.r.CommitMessages(ctx, commits...); err != nil {
		// The rows are in; a later commit or a redelivery (deduplicated) covers these offsets.
		l.p.Stats.CommitErrors.Add(1)
		l.p.log.Warn("commit failed; redelivery will be deduplicated", "error", err)
	}
	l.p.healthy.Store(true)
	now := time.Now()
	l.p.Stats.LastFlushUnixMs.Store(now.UnixMilli())
	if h := l.p.hooks.FlushDone; h != nil {
		h(job.batches, now)
	}
	return nil
}

// retry runs f until it succeeds, ctx ends, or RetryAttemptsMax attempts failed, sleeping an
// exponential backoff between RetryBackoffMin and RetryBackoffMax.
func retry[T any](ctx context.Context, p *Pipeline, what string, f func() (T, error)) (T, error) {
	wait := p.cfg.RetryBackoffMin
	var zero T
	for attempt := 1; ; attempt++ {
		v, err := f()
		if err == nil {
			return v, nil
		}
		if attempt >= p.cfg.RetryAttemptsMax || ctx.Err() != nil {
			return zero, fmt.Errorf("pipeline: %s: attempt %d: %w", what, attempt, err)
		}
		p.log.Warn("retrying", "what", what, "attempt", attempt, "error", err, "backoff", wait)
		select {
		case <-ctx.Done():
			return zero, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, p.cfg.RetryBackoffMax)
	}
}
