// Package pipeline is the sink's Kafka edge: it consumes the events and journal topics with a
// consumer group, decodes every message, dead-letters what it cannot read, batches rows per
// topic partition (bounded by rows, bytes and time), and flushes them: the batches of every
// partition become one insert per table, whose ranges are recorded (Intents) before it goes
// through rows.Storage with retries; offsets are committed only after the insert succeeded.
//
// Exactly-once into ClickHouse: a flush's insert_deduplication_token is a function of the
// set of offset ranges it covers (rows.GroupToken). A member that starts a partition recalls
// the recorded flushes with a range of it at or after the committed offset, re-forms each
// whole (every range, of any partition, read again from Kafka by offset; see recover.go) and
// re-sends it with the recorded token: ClickHouse keeps the first copy and drops the others,
// in the tables and in the rollups fed by materialized views, whichever member sends first.
//
// Kafka outages are transient: the pipeline is a kafka-go ConsumerGroup member with one
// partition reader per assigned partition. When a generation ends (broker restart,
// coordinator change, rebalance, fetch error) the pipeline drops every batch not yet handed to
// ClickHouse, waits for the flush in flight to finish (its intents are recorded before the
// member may rejoin, so the next owner of a partition recalls them), and rejoins with bounded
// exponential backoff (ReconnectBackoffMin..Max). Each generation starts every partition at
// the committed offset, with fresh recovery state, so a partition handed back after another
// member owned it never mixes rows of two generations in one range.
//
// Producer duplicates: with a dedupe window of W (Config.DedupeWindow), a message whose
// envelope id a stored-kind message at one of the previous W offsets of the same partition
// carried is not stored (counted in Stats.Duplicates, not dead-lettered; it advances its
// batch's range like a dead-letter). The rule depends on the log alone: each generation warms
// every partition's window up from the W offsets before its committed offset, so a range
// re-formed after a restart is filtered exactly as when it was first formed.
package pipeline

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/backoff"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Intents records and recalls inserts: a token and the ranges its rows came from
// (chstore.Store implements it).
type Intents interface {
	RecordIntents(ctx context.Context, group, token string, rs []rows.Range) error
	PendingIntents(ctx context.Context, group, topic string, partition int32, from int64, limit int) ([]rows.Intent, error)
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
	// IntentsMax bounds the recorded inserts recalled at once per partition after a restart.
	IntentsMax int
	// DecodeWorkers decode messages in parallel (order is kept per partition).
	DecodeWorkers int
	// InsertsParallelMax bounds the inserts of one flush (one per table) made at once.
	InsertsParallelMax int
	// ReconnectBackoffMin/Max bound the exponential backoff before the consumer-group member
	// rejoins after a failed join or a failed fetch (a broker restart, a coordinator change):
	// Kafka errors never stop Run.
	ReconnectBackoffMin time.Duration
	ReconnectBackoffMax time.Duration
	// SessionTimeout is how long the coordinator keeps a silent member: after a broker
	// restart the member that lost its id is only replaced when it expires, so it bounds how
	// long the rejoin waits. RebalanceTimeout bounds how long the group waits for members to
	// rejoin, among them a member finishing its flush in flight.
	SessionTimeout   time.Duration
	RebalanceTimeout time.Duration
	// DedupeWindow is W: a message whose event id a stored-kind message at one of the previous
	// W offsets of its partition carried is a producer's duplicate and is not stored (it
	// still advances its batch's range). Each partition's window is warmed up from Kafka when
	// a generation starts it. 0 = off.
	DedupeWindow int
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
		c.DecodeWorkers < 1 || c.InsertsParallelMax < 1 || c.ReconnectBackoffMin <= 0 || c.ReconnectBackoffMax < c.ReconnectBackoffMin ||
		c.SessionTimeout < 6*time.Second || c.RebalanceTimeout < time.Second || c.DedupeWindow < 0 {
		errs = append(errs, fmt.Errorf("pipeline: every bound must be positive: %+v", c))
	}
	return errors.Join(errs...)
}

// Stats are the pipeline's counters, read by the metrics and by tests.
type Stats struct {
	Messages, UsageRows, LedgerRows, DeadLetters, Batches, ReplayedBatches atomic.Int64
	InsertErrors, CommitErrors                                             atomic.Int64
	// Duplicates counts messages not stored because their event id was already seen in the
	// partition's dedupe window; WarmupMessages counts the messages read to warm windows up.
	Duplicates, WarmupMessages atomic.Int64
	// KafkaErrors counts failed joins and failed fetches; KafkaReconnects counts the
	// generations joined after the first one (each is a rejoin after a lost generation: a
	// broker restart, a coordinator change or a rebalance).
	KafkaErrors, KafkaReconnects atomic.Int64
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
	// connected is the sequence number of the live generation whose fetches did not fail; 0
	// while none is (starting, rejoining).
	connected atomic.Int64
	// failures counts Kafka errors since the last fetched message; it sets the backoff.
	failures atomic.Int64
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

// Connected reports whether the pipeline is a member of a live consumer-group generation
// (false while it starts, and while it rejoins after a Kafka error).
func (p *Pipeline) Connected() bool { return p.connected.Load() != 0 }

// reconnectWait is the wait after the n-th consecutive Kafka error (n >= 1).
func (p *Pipeline) reconnectWait(n int64) time.Duration {
	return backoff.Policy{Min: p.cfg.ReconnectBackoffMin, Max: p.cfg.ReconnectBackoffMax}.Wait(n)
}

type partKey struct {
	topic     string
	partition int32
}

// partState is one partition's batch in progress and its recovery state.
type partState struct {
	cur  *rows.Batch
	next int64 // expected next offset; -1 = unknown
	// known says the recorded inserts covering this run of offsets were recalled (and
	// recovered); offsets up to skip are in them, so they are observed and not batched again.
	known bool
	skip  int64
	// full says the recall hit IntentsMax: recall again past skip.
	full bool
	win  *window // dedupe window (nil when off), handed over by the fetcher
}

// fetched is one message on its way from the fetcher through a decode worker to the batcher.
// The batcher takes them in fetch order and waits on done, so decoding runs in parallel while
// every partition's order is kept.
type fetched struct {
	msg    kafka.Message
	gen    *generation
	u      *rows.Usage
	l      *rows.Ledger
	reason string // non-empty: dead-letter with this reason
	key    eventKey
	// win is the partition's warmed-up dedupe window, set on the first message a fetcher
	// hands over in its generation (nil when dedupe is off).
	win  *window
	done chan struct{}
}

// decodeOne decodes with the worker's own dec (an events.Decoder is used by one goroutine):
// the result and every dead-letter reason are events.Decode's.
func decodeOne(dec *events.Decoder, f *fetched) {
	defer close(f.done)
	f.u, f.l, f.key, f.reason = decodeMsg(dec, f.msg)
}

// decodeMsg maps m to its row and its event id's key, or gives the dead-letter reason. The
// dedupe warm-up classifies messages with it too, so a window is the same whether it was
// filled live or by a warm-up.
func decodeMsg(dec *events.Decoder, m kafka.Message) (u *rows.Usage, lg *rows.Ledger, k eventKey, reason string) {
	ev, err := dec.Decode(m.Value)
	if err != nil {
		return nil, nil, k, err.Error()
	}
	u, lg, ok := rows.FromEvent(ev, rows.Position{Topic: m.Topic, Partition: int32(m.Partition), Offset: m.Offset})
	if !ok {
		return nil, nil, k, fmt.Sprintf("sink: event type %s is not stored from topic %s", ev.Type, m.Topic)
	}
	return u, lg, keyOf(ev.ID), ""
}

// generation is one consumer-group generation as the loop sees it.
type generation struct {
	seq int64
	kg  *kafka.Generation
	// ctx ends when the generation ends or Run stops; fetches and dead-letter writes of the
	// generation use it.
	ctx  context.Context
	stop context.CancelFunc
	// acked is closed by the loop once the generation's unflushed batches are dropped and the
	// flush in flight is done: only then may the member rejoin.
	acked chan struct{}
	// failed is set by the first fetch error: one outage counts once, not once per partition.
	failed atomic.Bool
}

// errGenerationEnded aborts work of a generation that ended (its messages come back in the
// next one, from the committed offsets).
var errGenerationEnded = errors.New("pipeline: consumer-group generation ended")

// Run consumes until ctx is cancelled (returns nil) or an unrecoverable error: a ClickHouse
// failure beyond the retry budget. Kafka errors are never returned: the member rejoins.
func (p *Pipeline) Run(ctx context.Context) error {
	p.healthy.Store(true)
	p.connected.Store(0)
	dwc := kafkax.DefaultWriterConfig
	dwc.TLS = p.cfg.TLS
	dlq := kafkax.NewWriter(p.cfg.Brokers, "", dwc)
	defer dlq.Close()

	fctx, stop := context.WithCancel(ctx)
	defer stop()
	// Partition fetchers hand each message to the decode workers and, in the same order, to
	// the batcher; both channels are bounded by QueueMessagesMax.
	ordered := make(chan *fetched, p.cfg.QueueMessagesMax)
	work := make(chan *fetched, p.cfg.QueueMessagesMax)
	revoked := make(chan *generation)
	var workers sync.WaitGroup
	for i := 0; i < p.cfg.DecodeWorkers; i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			var dec events.Decoder
			for f := range work {
				decodeOne(&dec, f)
			}
		}()
	}
	memberDone := make(chan error, 1)
	go func() { memberDone <- p.member(fctx, work, ordered, revoked) }()
	l := &loop{p: p, dlq: dlq, parts: map[partKey]*partState{}}
	err := l.run(ctx, ordered, revoked, memberDone)
	stop()
	// The member returns once every fetcher of its last generation has returned.
	if merr := <-memberDone; err == nil {
		err = ctx2nil(ctx, merr)
	}
	close(work)
	workers.Wait()
	return err
}

// member joins the consumer group, starts one fetcher per assigned partition in each
// generation, and rejoins after every generation, with exponential backoff after errors.
func (p *Pipeline) member(ctx context.Context, work, ordered chan<- *fetched, revoked chan<- *generation) error {
	warn := kafka.LoggerFunc(func(msg string, a ...any) {
		p.log.Warn("kafka consumer group", "detail", fmt.Sprintf(msg, a...))
	})
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: p.cfg.GroupID, Brokers: p.cfg.Brokers, Topics: p.cfg.Topics, Dialer: kafkax.Dialer(p.cfg.TLS),
		// A third of the smallest session timeout the broker accepts (6 s by default).
		HeartbeatInterval: 2 * time.Second,
		SessionTimeout:    p.cfg.SessionTimeout,
		// A member waits for its flush in flight before it rejoins: RebalanceTimeout bounds that.
		RebalanceTimeout: p.cfg.RebalanceTimeout,
		// kafka-go's own fixed pause after a failed join; the exponential backoff is ours.
		JoinGroupBackoff: p.cfg.ReconnectBackoffMin,
		// A new group starts at the beginning: every event must reach ClickHouse.
		StartOffset: kafka.FirstOffset,
		// Bounds each coordinator request, the offset commit included.
		Timeout:     5 * time.Second,
		ErrorLogger: warn,
	})
	if err != nil {
		return fmt.Errorf("pipeline: consumer group: %w", err)
	}
	defer cg.Close()
	var seq int64
	for {
		kg, err := cg.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.connected.Store(0)
			p.Stats.KafkaErrors.Add(1)
			wait := p.reconnectWait(p.failures.Add(1))
			p.log.Warn("kafka: joining the consumer group failed; retrying", "group", p.cfg.GroupID, "error", err, "backoff", wait)
			if !backoff.Sleep(ctx, wait) {
				return nil
			}
			continue
		}
		seq++
		if seq > 1 {
			p.Stats.KafkaReconnects.Add(1)
		}
		g := &generation{seq: seq, kg: kg, acked: make(chan struct{})}
		g.ctx, g.stop = context.WithCancel(ctx)
		n := 0
		for _, as := range kg.Assignments {
			n += len(as)
		}
		p.log.Info("kafka: joined the consumer group", "group", p.cfg.GroupID, "generation", kg.ID, "member", kg.MemberID, "partitions", n)
		// The fence holds the generation open until the loop has let go of it.
		kg.Start(func(gctx context.Context) {
			select {
			case <-gctx.Done():
			case <-ctx.Done():
			}
			g.stop()
			p.connected.CompareAndSwap(g.seq, 0)
			select {
			case revoked <- g:
				select {
				case <-g.acked:
				case <-ctx.Done():
				}
			case <-ctx.Done():
			}
		})
		queue := max(1, p.cfg.QueueMessagesMax/max(n, 1))
		for topic, as := range kg.Assignments {
			for _, a := range as {
				kg.Start(func(context.Context) { p.fetch(ctx, g, topic, a, queue, work, ordered) })
			}
		}
		p.connected.Store(g.seq)
		if g.ctx.Err() != nil { // the fence already ran
			p.connected.CompareAndSwap(g.seq, 0)
		}
	}
}

// fetch reads one assigned partition from the generation's starting offset until the
// generation ends. A fetch error ends the generation (after a backoff), so the member rejoins.
//
// With a dedupe window of W, it first warms the partition's window up: it reads the
// messages at [max(o-W, first offset), o), o being the generation's starting (committed)
// offset, and only remembers their event ids; the window goes to the batcher with the first
// message at or after o. A warm-up read that fails is a fetch error like any other.
func (p *Pipeline) fetch(ctx context.Context, g *generation, topic string, a kafka.PartitionAssignment, queue int, work, ordered chan<- *fetched) {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: p.cfg.Brokers, Topic: topic, Partition: a.ID,
		MinBytes: 1, MaxBytes: p.cfg.FetchBytesMax,
		// A short broker wait keeps freshness; the batcher does the batching.
		MaxWait:        50 * time.Millisecond,
		QueueCapacity:  queue,
		ReadBackoffMin: 50 * time.Millisecond,
		ReadBackoffMax: time.Second,
		MaxAttempts:    3,
		Dialer:         kafkax.Dialer(p.cfg.TLS),
		ErrorLogger:    readerLogger(p.log, "kafka reader"),
	})
	defer r.Close()
	from := a.Offset
	var win *window
	if w := p.cfg.DedupeWindow; w > 0 {
		win = newWindow(w)
		if a.Offset > 0 {
			// Offsets before the partition's first one (deleted by retention) are skipped
			// by the reader, which logs that once.
			from = max(a.Offset-int64(w), 0)
		}
	}
	if err := r.SetOffset(from); err != nil {
		return
	}
	var dec *events.Decoder // the warm-up's own decoder
	for {
		m, err := r.FetchMessage(g.ctx)
		if err != nil {
			if g.ctx.Err() != nil {
				return
			}
			p.connected.CompareAndSwap(g.seq, 0)
			if !g.failed.CompareAndSwap(false, true) {
				return // another partition reported it; returning ends the generation
			}
			p.Stats.KafkaErrors.Add(1)
			wait := p.reconnectWait(p.failures.Add(1))
			p.log.Warn("kafka: fetch failed; rejoining the consumer group", "topic", topic, "partition", a.ID, "error", err, "backoff", wait)
			// Returning ends the generation; the rejoin waits for this sleep.
			backoff.Sleep(ctx, wait)
			return
		}
		if p.failures.Load() != 0 {
			p.failures.Store(0)
		}
		if win != nil && m.Offset < a.Offset {
			// Warm-up: remember the id (a message before the committed offset is never
			// stored again by this generation).
			if dec == nil {
				dec = &events.Decoder{}
			}
			_, _, k, reason := decodeMsg(dec, m)
			win.observe(m.Offset, k, reason == "")
			p.Stats.WarmupMessages.Add(1)
			continue
		}
		f := &fetched{msg: m, gen: g, win: win, done: make(chan struct{})}
		win, dec = nil, nil
		// To the decoders first: a message the batcher waits for is always decoded.
		select {
		case work <- f:
		case <-g.ctx.Done():
			return
		}
		select {
		case ordered <- f:
		case <-g.ctx.Done():
			return
		}
	}
}

type loop struct {
	p     *Pipeline
	dlq   *kafka.Writer
	parts map[partKey]*partState
	ready []*rows.Batch // sealed batches awaiting the next flush
	// recovered holds the tokens of the recorded inserts re-sent in this generation: an
	// insert spanning several of this member's partitions is re-sent once.
	recovered map[string]bool
	rowsN     int
	bytesN    int64
	deadline  time.Time
	flushTick *time.Timer
	// due is set when the batch wait ran out while a flush was being inserted: the next
	// flush starts as soon as that insert ends. Under load a batch thus grows with the
	// insert time (up to BatchRowsMax / BatchBytesMax) instead of being cut every BatchWait,
	// and ClickHouse gets fewer, larger inserts (each insert has a large fixed cost).
	due bool
	// inflight yields the result of the flush being inserted, nil when none is.
	inflight chan error
	// gen is the generation whose messages are batched; ended is the highest generation let
	// go of: its messages still queued are dropped.
	gen   *generation
	ended int64
}

func (l *loop) run(ctx context.Context, ch <-chan *fetched, revoked <-chan *generation, memberDone <-chan error) error {
	l.flushTick = time.NewTimer(time.Hour)
	l.flushTick.Stop()
	l.recovered = map[string]bool{}
	defer func() { _ = l.waitInflight() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-memberDone:
			return ctx2nil(ctx, err)
		case err := <-l.inflight:
			l.inflight = nil
			if err != nil {
				return ctx2nil(ctx, err)
			}
			if l.due {
				// The batch wait ran out during the insert: the rows that arrived
				// meanwhile go now, in one larger flush.
				if err := l.flush(ctx); err != nil {
					return ctx2nil(ctx, err)
				}
			}
		case g := <-revoked:
			// The generation ended: its partitions may go to another member, which will
			// recall the intents recorded by the flush in flight, so finish that first.
			l.abandon(g)
			err := l.waitInflight()
			close(g.acked)
			if err != nil {
				return ctx2nil(ctx, err)
			}
		case f := <-ch:
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil
			}
			if f.gen.seq <= l.ended {
				continue // a message of a generation let go of: it comes back in the next one
			}
			if l.gen != f.gen {
				l.abandon(l.gen)
				l.gen = f.gen
			}
			if err := l.handle(ctx, f); err != nil {
				if errors.Is(err, errGenerationEnded) {
					l.abandon(f.gen)
					continue
				}
				return ctx2nil(ctx, err)
			}
			// A recall in handle may have waited for the insert in flight: a due flush
			// goes now.
			if l.rowsN >= l.p.cfg.BatchRowsMax || l.bytesN >= l.p.cfg.BatchBytesMax || (l.due && l.inflight == nil) {
				if err := l.flush(ctx); err != nil {
					return ctx2nil(ctx, err)
				}
			}
		case <-l.flushTick.C:
			if l.inflight != nil {
				// Flushing now would only wait for the insert in flight; keep
				// filling the batch and flush as soon as that insert ends.
				l.due = true
				continue
			}
			if err := l.flush(ctx); err != nil {
				return ctx2nil(ctx, err)
			}
		}
	}
}

// abandon lets go of generation g: every batch not yet handed to an inserter is dropped
// (its messages were not committed, so the next generation redelivers them) and every
// partition's recovery state is forgotten (the next generation recalls the intents again).
func (l *loop) abandon(g *generation) {
	if g == nil || g.seq <= l.ended {
		return
	}
	l.ended = g.seq
	if l.rowsN > 0 || l.bytesN > 0 {
		l.p.log.Warn("consumer-group generation ended: dropping unflushed batches", "generation", g.kg.ID, "rows", l.rowsN, "bytes", l.bytesN)
	}
	clear(l.parts)
	l.ready = l.ready[:0]
	clear(l.recovered)
	l.rowsN, l.bytesN = 0, 0
	l.p.Stats.BufferedBytes.Store(0)
	l.flushTick.Stop()
	l.deadline = time.Time{}
	l.due = false
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
		st = &partState{next: -1, skip: -1}
		l.parts[key] = st
	}
	if f.win != nil {
		st.win = f.win
	}
	jump := st.next != m.Offset || !st.known
	if jump || (st.full && m.Offset > st.skip) {
		if jump && st.cur != nil && st.cur.Messages > 0 {
			// First sight of the partition, or a jump (rebalance, restart of the fetch):
			// the unflushed batch may be redelivered, so drop it.
			l.rowsN -= st.cur.Rows()
			l.bytesN -= st.cur.Bytes
			l.p.log.Warn("offset jump: dropping unflushed batch", "range", st.cur.Range.String(), "offset", m.Offset)
			st.cur = nil
		}
		if err := l.recall(ctx, f.gen, st, key, m.Offset); err != nil {
			return err
		}
	}
	st.next = m.Offset + 1
	u, lg := f.u, f.l
	if l.p.cfg.DedupeWindow > 0 {
		if st.win == nil || m.Offset < st.win.next {
			// Cannot happen: the fetcher hands the window over with its first message and
			// reads each partition forward. Storing without the window could store a copy.
			return fmt.Errorf("pipeline: %s: no dedupe window for offset %d", key.topic, m.Offset)
		}
		if st.win.observe(m.Offset, f.key, f.reason == "") && m.Offset > st.skip {
			// A producer's duplicate: an earlier message of this partition within the window
			// carries the same event id, and that one is stored (or dropped for the same
			// reason). It advances the range like a dead-lettered message.
			u, lg = nil, nil
			l.p.Stats.Duplicates.Add(1)
		}
	}
	if m.Offset <= st.skip {
		// In a recovered insert: stored (or dead-lettered) when the insert was first formed.
		return nil
	}
	if f.reason != "" {
		if err := l.deadLetter(ctx, f.gen, m, f.reason); err != nil {
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
	if l.deadline.IsZero() {
		l.deadline = time.Now().Add(l.p.cfg.BatchWait)
		l.flushTick.Reset(l.p.cfg.BatchWait)
	}
	return nil
}

// deadLetter publishes m to the dead-letter topic with the reason, retrying while the
// generation lasts: when it ends (a broker outage ends it within seconds), the message is
// not committed and comes back in the next generation, so an outage never stops Run here.
func (l *loop) deadLetter(ctx context.Context, g *generation, m kafka.Message, reason string) error {
	_, err := retry(g.ctx, l.p, "dead-letter", func() (struct{}, error) {
		return struct{}{}, kafkax.DeadLetter(g.ctx, l.dlq, l.p.cfg.DeadLetterTopic, "sink", m, reason)
	})
	if err != nil {
		if g.ctx.Err() != nil && ctx.Err() == nil {
			return errGenerationEnded
		}
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

// flush seals every partition's batch and hands the sealed batches to an inserter. One
// flush is inserted at a time while the next batch fills: memory holds at most two flushes'
// worth of rows, and a slow ClickHouse makes flush wait here, which stops consumption.
func (l *loop) flush(ctx context.Context) error {
	l.flushTick.Stop()
	l.deadline = time.Time{}
	l.due = false
	for _, st := range l.parts {
		l.seal(st)
	}
	if len(l.ready) == 0 {
		return nil
	}
	if err := l.waitInflight(); err != nil {
		return err
	}
	job := &flushJob{gen: l.gen, batches: append([]*rows.Batch(nil), l.ready...)}
	for _, b := range job.batches {
		l.rowsN -= b.Rows()
		l.bytesN -= b.Bytes
	}
	l.ready = l.ready[:0]
	l.p.Stats.BufferedBytes.Store(l.bytesN)
	l.inflight = make(chan error, 1)
	go func(ch chan error) { ch <- l.insert(ctx, job) }(l.inflight)
	return nil
}

type flushJob struct {
	// gen is the generation the batches were read in; their offsets are committed in it, so
	// a stale generation's commit is refused by the coordinator instead of overwriting the
	// next owner's offsets.
	gen     *generation
	batches []*rows.Batch
}

// insert merges the flush's partition batches into one insert per table, records its
// intent (token and ranges), inserts it, then commits the batches' offsets.
func (l *loop) insert(ctx context.Context, job *flushJob) error {
	merged := rows.Merge(job.batches)
	if _, err := retry(ctx, l.p, "record intents", func() (struct{}, error) {
		return struct{}{}, l.p.intents.RecordIntents(ctx, l.p.cfg.GroupID, merged.Token(), merged.Ranges)
	}); err != nil {
		l.p.healthy.Store(false)
		return err
	}
	if err := l.p.insertTables(ctx, merged); err != nil {
		return err
	}
	commits := map[string]map[int]int64{}
	for _, b := range job.batches {
		// Kafka's committed offset is the next one to read.
		if commits[b.Range.Topic] == nil {
			commits[b.Range.Topic] = map[int]int64{}
		}
		if next := b.Range.Last + 1; next > commits[b.Range.Topic][int(b.Range.Partition)] {
			commits[b.Range.Topic][int(b.Range.Partition)] = next
		}
	}
	l.p.Stats.Batches.Add(int64(len(job.batches)))
	if h := l.p.hooks.AfterInsert; h != nil {
		if err := h(); err != nil {
			return err
		}
	}
	l.commit(job.gen, commits)
	l.p.flushed(job.batches)
	return nil
}

// commit commits offsets in generation g. A failure is only counted: the rows are in, and a
// later commit or a redelivery (deduplicated) covers these offsets; a generation that ended
// (broker restart, rebalance) lands here.
func (l *loop) commit(g *generation, offsets map[string]map[int]int64) {
	if err := g.kg.CommitOffsets(offsets); err != nil {
		l.p.Stats.CommitErrors.Add(1)
		l.p.log.Warn("commit failed; redelivery will be deduplicated", "error", err)
	}
}

// insertTables inserts b (usage rows and ledger rows, one insert per table, with the same
// token: the deduplication is per table), retrying each insert with backoff; at most
// InsertsParallelMax run at once.
func (p *Pipeline) insertTables(ctx context.Context, b *rows.Batch) error {
	var parts []*rows.Batch
	if len(b.Usage) > 0 {
		u := *b
		u.Ledger = nil
		parts = append(parts, &u)
	}
	if len(b.Ledger) > 0 {
		lg := *b
		lg.Usage = nil
		parts = append(parts, &lg)
	}
	sem := make(chan struct{}, p.cfg.InsertsParallelMax)
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, part := range parts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			_, errs[i] = retry(ctx, p, "insert "+part.String(), func() (struct{}, error) {
				err := p.store.BatchInsert(ctx, part)
				if err != nil {
					p.Stats.InsertErrors.Add(1)
				}
				return struct{}{}, err
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		p.healthy.Store(false)
		return err
	}
	p.Stats.UsageRows.Add(int64(len(b.Usage)))
	p.Stats.LedgerRows.Add(int64(len(b.Ledger)))
	return nil
}

// flushed records a successful insert of batches.
func (p *Pipeline) flushed(batches []*rows.Batch) {
	p.healthy.Store(true)
	now := time.Now()
	p.Stats.LastFlushUnixMs.Store(now.UnixMilli())
	if h := p.hooks.FlushDone; h != nil {
		h(batches, now)
	}
}

// retry runs f until it succeeds, ctx ends, or RetryAttemptsMax attempts failed, sleeping an
// exponential backoff between RetryBackoffMin and RetryBackoffMax.
func retry[T any](ctx context.Context, p *Pipeline, what string, f func() (T, error)) (T, error) {
	policy := backoff.Policy{Min: p.cfg.RetryBackoffMin, Max: p.cfg.RetryBackoffMax}
	var zero T
	for attempt := 1; ; attempt++ {
		v, err := f()
		if err == nil {
			return v, nil
		}
		if attempt >= p.cfg.RetryAttemptsMax || ctx.Err() != nil {
			return zero, fmt.Errorf("pipeline: %s: attempt %d: %w", what, attempt, err)
		}
		wait := policy.Wait(int64(attempt))
		p.log.Warn("retrying", "what", what, "attempt", attempt, "error", err, "backoff", wait)
		if !backoff.Sleep(ctx, wait) {
			return zero, ctx.Err()
		}
	}
}

// readerLogger is a kafka-go Reader's ErrorLogger. kafka-go sets its read deadline only a
// quarter of MaxWait after the broker's own wait, so on an idle partition a fetch sometimes
// ends at the client's deadline with "i/o timeout" before the broker's empty answer arrives;
// the reader reconnects and carries on. That is the idle path, not a fault: DEBUG. Every
// other reader error (refused, reset, unknown partition) is a warning.
func readerLogger(log *slog.Logger, what string) kafka.Logger {
	return kafka.LoggerFunc(func(msg string, a ...any) {
		level := slog.LevelWarn
		if anyTimeout(a) {
			level = slog.LevelDebug
		}
		log.Log(context.Background(), level, what, "detail", fmt.Sprintf(msg, a...))
	})
}

// anyTimeout reports whether one of the arguments is a network timeout error.
func anyTimeout(args []any) bool {
	for _, a := range args {
		err, ok := a.(error)
		if !ok {
			continue
		}
		var ne net.Error
		if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			return true
		}
	}
	return false
}
