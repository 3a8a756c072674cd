// Package engine runs the ledger fold on Kafka: it consumes the events topic in a consumer
// group, folds each assigned partition with package fold, publishes the outputs, persists
// per-account state with the offsets it reflects on the compacted ledger-state topic, and
// only then commits the consumer offsets.
//
// Exactly-once effect, per batch of one partition:
//  1. fold the batch (undecodable messages go to the dead-letter topic);
//  2. publish journal (ledger.entry, request.expired), balances, limits and notifications
//     (notification, topup.requested, keyed by account, ids derived in the fold), acks=all;
//  3. write the touched accounts' state records (each carries the offset of the last event
//     folded for that account), acks=all;
//  4. write the partition record (watermark and last offset), acks=all;
//  5. commit the consumer offset.
//
// A crash between any two steps restarts from the committed offset with the state records:
// events at or below an account's stored offset are skipped, so nothing is applied twice;
// nothing past the committed offset was lost; outputs re-emitted by the replay carry the
// same deterministic ids. The partition record is written after the accounts so the
// restored clock (watermark) never runs ahead of the restored accounts.
package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Source is the CloudEvents source of the ledger's outputs.
const Source = "urn:tally:ledger"

// Config bounds the engine. The root package fills it from the environment.
type Config struct {
	Brokers []string
	Topics  kafkax.Topics
	Group   string
	Fold    fold.Config
	// BatchMax is the most events folded per batch (one publish/persist/commit cycle).
	BatchMax int
	// BatchWait is how long a batch waits for more events after its first.
	BatchWait time.Duration
	// FetchBytesMax bounds one fetch from the broker.
	FetchBytesMax int
	// FetchWait is the broker-side long-poll wait.
	FetchWait time.Duration
	// QueueMax bounds the messages a partition reader buffers ahead of the fold.
	QueueMax int
	// JournalPerAccount is how many recent journal lines per account the engine keeps in
	// memory for the entries API; JournalAccountsMax bounds how many accounts it keeps them for.
	JournalPerAccount  int
	JournalAccountsMax int
	// TickInterval is how long a partition of the events topic that this engine owns may go
	// without a message before the engine publishes a tally.clock.tick.v1 into it (0 = never).
	// Folding the tick moves the partition's log time to the tick's time, so expired grants
	// and abandoned holds are swept on an idle partition too (see package fold).
	TickInterval time.Duration
	// RetryBackoff is the pause before rejoining after a failed generation.
	RetryBackoff time.Duration
	// Writer bounds the writers; Writer.TLS (KAFKA_TLS_*) is also used by the consumer group,
	// the readers and the restore (nil = plaintext).
	Writer   kafkax.WriterConfig
	Logger   *slog.Logger
	Registry prometheus.Registerer
	// FaultHook, when set (tests only), is called after each write stage of a batch
	// ("published", "persisted", "snapshotted"); an error aborts the batch there, exactly as a
	// crash would: the generation fails and the state is restored from Kafka.
	FaultHook func(stage string) error
}

// Engine is the running ledger.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	out     *kafka.Writer // journal, balances, limits
	state   *kafka.Writer // ledger state
	dlq     *kafka.Writer
	tick    *kafka.Writer // clock ticks, each to the partition it names
	mu      sync.RWMutex
	parts   map[int32]*partition
	ready   atomic.Bool
	restore atomic.Int64 // last restore duration, ns
	done    atomic.Int64 // messages whose batch was published, persisted and committed
}

// Committed is the number of events-topic messages (folded or dead-lettered) whose batch
// has been published, persisted and committed since the engine started.
func (e *Engine) Committed() int64 { return e.done.Load() }

type partition struct {
	mu      sync.Mutex
	st      *fold.State
	journal *journal
}

// New builds an engine; cfg must be valid (see the root package's Config.Validate).
func New(cfg Config) *Engine {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, parts: map[int32]*partition{},
		out: newWriter(cfg, ""), state: newWriter(cfg, cfg.Topics.LedgerState),
		dlq: newWriter(cfg, "")} // kafkax.DeadLetter names the topic per message
	e.tick = newWriter(cfg, cfg.Topics.Events)
	// A tick must land on the idle partition it is for: the message names it.
	e.tick.Balancer = kafka.BalancerFunc(func(m kafka.Message, _ ...int) int { return m.Partition })
	e.tick.BatchTimeout = time.Millisecond // one message at a time: do not wait for more
	e.m = newMetrics(cfg.Registry)
	return e
}

func (e *Engine) fault(stage string) error {
	if e.cfg.FaultHook == nil {
		return nil
	}
	if err := e.cfg.FaultHook(stage); err != nil {
		return fmt.Errorf("ledger: injected fault after %s: %w", stage, err)
	}
	return nil
}

// BatchBytesMax bounds one produce batch per partition. kafkax.NewWriter allows 4 MiB, but
// a broker's default message.max.bytes is 1 MiB (kfake's too): a larger batch is refused
// with "Message Size Too Large".
const BatchBytesMax = 1_000_000

func newWriter(cfg Config, topic string) *kafka.Writer {
	w := kafkax.NewWriter(cfg.Brokers, topic, cfg.Writer)
	w.BatchBytes = BatchBytesMax
	return w
}

// Ready reports whether the state of the current assignment has been restored.
func (e *Engine) Ready() bool { return e.ready.Load() }

// RestoreDuration is how long the last restore took.
func (e *Engine) RestoreDuration() time.Duration { return time.Duration(e.restore.Load()) }

// Run consumes until ctx is cancelled. A failed generation (a write that failed after the
// writer's retries) is abandoned and rejoined: the state is restored again from the
// ledger-state topic, which is always consistent with the committed offsets.
func (e *Engine) Run(ctx context.Context) error {
	defer e.out.Close()
	defer e.state.Close()
	defer e.dlq.Close()
	defer e.tick.Close()
	return kafkax.Group{ID: e.cfg.Group, Brokers: e.cfg.Brokers, Topics: []string{e.cfg.Topics.Events},
		TLS: e.cfg.Writer.TLS, Retry: e.cfg.RetryBackoff, Name: "ledger", Log: e.log,
	}.Run(ctx, func(ctx context.Context, gen *kafka.Generation) error {
		e.ready.Store(false) // until this generation's partitions are restored
		return e.generation(ctx, gen)
	})
}

// generation restores the assigned partitions and folds them until the generation ends.
func (e *Engine) generation(ctx context.Context, gen *kafka.Generation) error {
	runCtx, cancel := context.WithCancel(ctx) // ends with the generation, or at the first partition's error
	defer cancel()
	assigned := gen.Assignments[e.cfg.Topics.Events]
	ids := make([]int32, 0, len(assigned))
	for _, a := range assigned {
		ids = append(ids, int32(a.ID))
	}
	t0 := time.Now()
	states, err := restore(runCtx, kafkax.Dialer(e.cfg.Writer.TLS), e.cfg.Brokers, e.cfg.Topics.LedgerState, e.cfg.Fold, ids)
	if err != nil {
		return err
	}
	e.restore.Store(int64(time.Since(t0)))
	parts := map[int32]*partition{}
	for _, id := range ids {
		parts[id] = &partition{st: states[id], journal: newJournal(e.cfg.JournalPerAccount, e.cfg.JournalAccountsMax)}
	}
	e.mu.Lock()
	e.parts = parts
	e.mu.Unlock()
	e.ready.Store(true)
	e.log.Info("ledger: assignment restored", "generation", gen.ID, "partitions", ids, "restore", time.Since(t0).String())
	var commitMu sync.Mutex
	errs := make(chan error, len(assigned))
	for _, a := range assigned {
		go func(a kafka.PartitionAssignment) {
			errs <- e.consume(runCtx, gen, &commitMu, parts[int32(a.ID)], a)
		}(a)
	}
	var first error
	for range assigned {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	e.ready.Store(false)
	if runCtx.Err() != nil && first != nil && errors.Is(first, context.Canceled) {
		return nil
	}
	return first
}

func (e *Engine) consume(ctx context.Context, gen *kafka.Generation, commitMu *sync.Mutex, p *partition, a kafka.PartitionAssignment) error {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: e.cfg.Brokers, Topic: e.cfg.Topics.Events, Partition: a.ID,
		MinBytes: 1, MaxBytes: e.cfg.FetchBytesMax, MaxWait: e.cfg.FetchWait,
		QueueCapacity: e.cfg.QueueMax, ReadLagInterval: -1, ReadBatchTimeout: e.cfg.FetchWait + time.Second,
		Dialer: kafkax.Dialer(e.cfg.Writer.TLS),
	})
	defer r.Close()
	off := a.Offset
	if off < 0 {
		off = kafka.FirstOffset
	}
	if err := r.SetOffset(off); err != nil {
		return fmt.Errorf("ledger: partition %d: seek %d: %w", a.ID, off, err)
	}
	// Two stages: this goroutine fetches, decodes, folds and encodes batch k+1 while the
	// writer goroutine publishes, persists and commits batch k. The hand-off is unbuffered
	// and there are two batchers, so a batcher's buffers are reused only after its batch
	// was written. Batches are written strictly in order.
	var lastFetchNs atomic.Int64 // wall clock of the last fetch (or of the last tick sent)
	lastFetchNs.Store(time.Now().UnixNano())
	if e.cfg.TickInterval > 0 {
		tctx, tcancel := context.WithCancel(ctx)
		defer tcancel()
		go e.ticker(tctx, int32(a.ID), &lastFetchNs)
	}
	batchers := [2]*batcher{newBatcher(e, p, int32(a.ID)), newBatcher(e, p, int32(a.ID))}
	jobs := make(chan *batcher)
	werr := make(chan error, 1)
	go func() { werr <- e.writeLoop(ctx, gen, commitMu, a.ID, jobs) }()
	defer func() { close(jobs); <-werr }()
	for i := 0; ; i++ {
		b := batchers[i%2]
		msgs, err := e.fetch(ctx, r, b.msgs[:0])
		b.msgs = msgs
		lastFetchNs.Store(time.Now().UnixNano())
		if len(msgs) == 0 {
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("ledger: partition %d: fetch: %w", a.ID, err)
			}
			continue
		}
		if err := b.prepare(ctx); err != nil {
			return err
		}
		select {
		case jobs <- b:
		case err := <-werr:
			werr <- err // for the deferred drain
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

// ticker publishes a clock tick into partition part of the events topic whenever nothing
// was fetched from it for TickInterval, until ctx ends (the partition is no longer owned:
// only the instance that owns a partition ticks it). The tick is stamped with the wall clock
// and written with acks=all; the fold takes its time from the event, so a replay of the log
// gives the same state. A tick Kafka does not acknowledge is counted and retried at the next
// interval.
func (e *Engine) ticker(ctx context.Context, part int32, lastFetchNs *atomic.Int64) {
	iv := e.cfg.TickInterval
	t := time.NewTicker(max(iv/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if now.UnixNano()-lastFetchNs.Load() < int64(iv) {
			continue
		}
		lastFetchNs.Store(now.UnixNano())
		if err := e.publishTick(ctx, part, now); err != nil {
			if ctx.Err() != nil {
				return
			}
			e.m.tickErrors.Inc()
			e.log.Warn("ledger: clock tick not published", "partition", part, "err", err)
			continue
		}
		e.m.ticks.Inc()
	}
}

func (e *Engine) publishTick(ctx context.Context, part int32, now time.Time) error {
	ev, err := events.New(Source, now, events.ClockTick{Partition: part})
	if err != nil {
		return err
	}
	v, err := ev.Encode()
	if err != nil {
		return err
	}
	return e.tick.WriteMessages(ctx, kafka.Message{Partition: int(part), Value: v})
}

// writeLoop writes prepared batches in order: outputs, state records, snapshot, commit.
func (e *Engine) writeLoop(ctx context.Context, gen *kafka.Generation, commitMu *sync.Mutex, part int, jobs <-chan *batcher) error {
	for b := range jobs {
		if err := b.write(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		last := b.msgs[len(b.msgs)-1]
		tc := time.Now()
		commitMu.Lock()
		err := gen.CommitOffsets(map[string]map[int]int64{e.cfg.Topics.Events: {part: last.Offset + 1}})
		commitMu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ledger: partition %d: commit %d: %w", part, last.Offset+1, err)
		}
		e.m.stage.WithLabelValues("commit").Observe(time.Since(tc).Seconds())
		e.done.Add(int64(len(b.msgs)))
		e.m.lag.WithLabelValues(itoa(part)).Set(float64(max(0, last.HighWaterMark-last.Offset-1)))
	}
	return nil
}

// fetch returns up to BatchMax messages: it blocks for the first, then waits at most
// BatchWait for more.
func (e *Engine) fetch(ctx context.Context, r *kafka.Reader, dst []kafka.Message) ([]kafka.Message, error) {
	m, err := r.FetchMessage(ctx)
	if err != nil {
		return dst, err
	}
	dst = append(dst, m)
	wctx, cancel := context.WithTimeout(ctx, e.cfg.BatchWait)
	defer cancel()
	for len(dst) < e.cfg.BatchMax {
		m, err := r.FetchMessage(wctx)
		if err != nil {
			break
		}
		dst = append(dst, m)
	}
	return dst, nil
}

// stateRecord is one record of the ledger-state topic: an account (key "a/<id>") or a
// partition snapshot (key "p/<partition>").
type stateRecord struct {
	Partition int32          `json:"p"`
	Account   *fold.Account  `json:"a,omitempty"`
	Snapshot  *fold.Snapshot `json:"s,omitempty"`
}

func partitionKey(p int32) []byte      { return []byte("p/" + itoa(int(p))) }
func itoa[T ~int | ~int32](v T) string { return fmt.Sprint(int64(v)) }

// Typical encoded sizes, to size a batch's arenas at once: a ledger.entry or
// balance.updated event with its key is about 500 bytes, an account record about 210.
const (
	outputBytesEst        = 512
	accountRecordBytesEst = 256
)

// batcher folds and publishes one partition's batches, reusing its buffers.
type batcher struct {
	e       *Engine
	p       *partition
	id      int32
	msgs    []kafka.Message
	dec     events.Decoder // one per batcher: a Decoder is not shared between goroutines
	evs     []events.Event
	out     fold.Output
	windows []events.AllowanceWindow
	outMsg  []kafka.Message
	stMsg   []kafka.Message
	outMsgs []kafka.Message // the prepared batch
	stMsgs  []kafka.Message
	arena   []byte
	stArena []byte
	ends    []int
	spans   []struct{ key, val [2]int }
	topics  []string
}

func newBatcher(e *Engine, p *partition, id int32) *batcher { return &batcher{e: e, p: p, id: id} }

// prepare decodes (dead-lettering what does not decode), folds and encodes the batch.
func (b *batcher) prepare(ctx context.Context) error {
	e := b.e
	t0 := time.Now()
	b.evs = b.evs[:0]
	type pos struct {
		off, recNs int64 // offset and record timestamp
		i          int
	}
	decoded := make([]pos, 0, len(b.msgs))
	for _, m := range b.msgs {
		ev, err := b.dec.Decode(m.Value)
		if err != nil {
			e.m.deadLettered.Inc()
			if derr := kafkax.DeadLetter(ctx, e.dlq, e.cfg.Topics.DeadLetter, "ledger", m, err.Error()); derr != nil {
				return fmt.Errorf("ledger: partition %d: %w", b.id, derr)
			}
			continue
		}
		b.evs = append(b.evs, ev)
		decoded = append(decoded, pos{m.Offset, RecordTimeNs(m), len(b.evs) - 1})
	}
	t1 := time.Now()
	e.m.stage.WithLabelValues("decode").Observe(t1.Sub(t0).Seconds())
	b.out.Reset()
	p := b.p
	p.mu.Lock()
	for _, d := range decoded {
		p.st.Apply(fold.Input{Offset: d.off, Event: &b.evs[d.i], RecordTimeNs: d.recNs}, &b.out)
	}
	// The last message may have been dead-lettered: the partition offset still moves past it.
	snap := p.st.Snapshot()
	if last := b.msgs[len(b.msgs)-1].Offset; snap.Offset < last {
		snap.Offset = last
	}
	t2 := time.Now()
	e.m.stage.WithLabelValues("fold").Observe(t2.Sub(t1).Seconds())
	var err error
	b.outMsgs, err = b.outputs()
	if err != nil {
		p.mu.Unlock()
		return err
	}
	b.stMsgs = b.stateRecords(snap)
	p.journal.add(b.out.Entries)
	dedupeIDs := p.st.DedupeEntries()
	p.mu.Unlock()
	t3 := time.Now()
	e.m.stage.WithLabelValues("encode").Observe(t3.Sub(t2).Seconds())
	e.m.folded.Add(float64(len(decoded)))
	if len(decoded) > 0 {
		e.m.foldSeconds.Observe(time.Since(t0).Seconds() / float64(len(decoded)))
	}
	e.m.dedupeEvicted.Add(float64(b.out.Evicted))
	e.m.dedupeIDs.WithLabelValues(itoa(b.id)).Set(float64(dedupeIDs))
	for _, an := range b.out.Anomalies {
		e.m.anomalies.WithLabelValues(an.Kind).Inc()
		if an.Kind != fold.AnomalyDuplicate {
			e.log.Warn("ledger: anomaly", "kind", an.Kind, "account", an.AccountID, "event", an.EventID, "request", an.RequestID, "project", an.ProjectID)
		}
		switch an.Kind {
		case fold.AnomalyTooLate, fold.AnomalyFutureTime, fold.AnomalyOverflow, fold.AnomalyUnknownPlan, fold.AnomalyTooManyBudgets:
			if err := b.deadLetterRefused(ctx, &an); err != nil {
				return err
			}
		}
	}
	return nil
}

// deadLetterRefused sends an event the fold refused (too late, or too far in the future) to
// the dead-letter topic, with the reason: it was not applied, and must not be silently
// dropped.
func (b *batcher) deadLetterRefused(ctx context.Context, an *fold.Anomaly) error {
	e := b.e
	i := sort.Search(len(b.msgs), func(i int) bool { return b.msgs[i].Offset >= an.Offset })
	if i == len(b.msgs) || b.msgs[i].Offset != an.Offset {
		return fmt.Errorf("ledger: partition %d: %s event at offset %d is not in the batch", b.id, an.Kind, an.Offset)
	}
	format := "%s: event %s for account %s has time %s, before the ledger's dedupe horizon %s " +
		"(the partition watermark minus LEDGER_DEDUPE_WINDOW_MS, or the account's dedupe floor): it cannot be proven new " +
		"and was not applied; re-publish it with a new event id if it must count"
	if an.Kind == fold.AnomalyFutureTime {
		format = "%s: event %s for account %s has time %s, after %s (its Kafka record timestamp plus " +
			"LEDGER_FUTURE_SKEW_MAX_MS): it was not applied, so that it cannot move the ledger's clock ahead; " +
			"re-publish it with its real time if it must count"
	}
	reason := fmt.Sprintf(format, an.Kind, an.EventID, an.AccountID, eventTime(&b.evs, an.EventID),
		time.Unix(0, an.HorizonNs).UTC().Format(time.RFC3339Nano))
	if an.Kind == fold.AnomalyUnknownPlan {
		reason = fmt.Sprintf("%s: event %s for account %s names a plan the ledger's price book (%s) does not have: it was not applied",
			an.Kind, an.EventID, an.AccountID, e.cfg.Fold.Book.Version)
	}
	if an.Kind == fold.AnomalyTooManyBudgets {
		reason = fmt.Sprintf("%s: event %s for account %s would set a budget for project %s beyond the %d project budgets an account "+
			"may hold: it was not applied (remove a budget first)", an.Kind, an.EventID, an.AccountID, an.ProjectID, events.MaxProjectBudgets)
	}
	if an.Kind == fold.AnomalyOverflow {
		reason = fmt.Sprintf("%s: event %s for account %s would overflow one of the account's int64 balances or totals "+
			"(each amount is at most %d micro-credits, their sum is not bounded): it was not applied", an.Kind, an.EventID,
			an.AccountID, events.MaxAmountMicros)
	}
	e.m.deadLettered.Inc()
	if err := kafkax.DeadLetter(ctx, e.dlq, e.cfg.Topics.DeadLetter, "ledger", b.msgs[i], reason); err != nil {
		return fmt.Errorf("ledger: partition %d: %w", b.id, err)
	}
	return nil
}

func eventTime(evs *[]events.Event, id string) string {
	for i := range *evs {
		if (*evs)[i].ID == id {
			return (*evs)[i].Time.UTC().Format(time.RFC3339Nano)
		}
	}
	return "?"
}

// write publishes the batch's outputs, then its account records, then its snapshot.
func (b *batcher) write(ctx context.Context) error {
	e, outMsgs, stMsgs := b.e, b.outMsgs, b.stMsgs
	t3 := time.Now()
	if err := e.out.WriteMessages(ctx, outMsgs...); err != nil {
		return fmt.Errorf("ledger: partition %d: publish %d outputs: %w", b.id, len(outMsgs), kafkax.ShortErr(err))
	}
	if err := e.fault("published"); err != nil {
		return err
	}
	t4 := time.Now()
	e.m.stage.WithLabelValues("publish").Observe(t4.Sub(t3).Seconds())
	// Accounts first, then the partition record (see the package comment).
	if err := e.state.WriteMessages(ctx, stMsgs[:len(stMsgs)-1]...); err != nil {
		return fmt.Errorf("ledger: partition %d: persist %d accounts: %w", b.id, len(stMsgs)-1, kafkax.ShortErr(err))
	}
	if err := e.fault("persisted"); err != nil {
		return err
	}
	if err := e.state.WriteMessages(ctx, stMsgs[len(stMsgs)-1]); err != nil {
		return fmt.Errorf("ledger: partition %d: persist snapshot: %w", b.id, kafkax.ShortErr(err))
	}
	if err := e.fault("snapshotted"); err != nil {
		return err
	}
	e.m.stage.WithLabelValues("persist").Observe(time.Since(t4).Seconds())
	e.m.published.Add(float64(len(outMsgs)))
	e.m.batchEvents.Observe(float64(len(b.msgs)))
	return nil
}

// outputs encodes the fold's outputs as messages (called under the partition lock: it
// reads account state for balance.updated). Message values are encoded straight into one
// arena per batch, with the derived ids appended in place (no per-line strings).
func (b *batcher) outputs() ([]kafka.Message, error) {
	e, st, out := b.e, b.p.st, &b.out
	msgs := b.outMsg[:0]
	// Grow the arena once rather than by doubling through a large batch.
	arena := slices.Grow(b.arena[:0], (len(out.Entries)+len(out.Touched))*outputBytesEst)
	type span struct{ key, val [2]int }
	spans := b.spans[:0]
	topics := b.topics[:0]
	// add records the message whose key starts at k0 and value at v0, ending at the arena's end.
	add := func(topic string, k0, v0 int) {
		spans = append(spans, span{[2]int{k0, v0}, [2]int{v0, len(arena)}})
		topics = append(topics, topic)
	}
	var cause string
	var txBuf [36]byte
	for i := range out.Entries {
		en := &out.Entries[i]
		if i == 0 || en.Cause != cause {
			cause = en.Cause
			events.AppendDerivedID(txBuf[:0], cause, "tx") // fold.TransactionID(cause)
		}
		k0 := len(arena)
		arena = append(arena, en.AccountID...)
		v0 := len(arena)
		arena = appendEntryEvent(arena, en, txBuf[:])
		add(e.cfg.Topics.Journal, k0, v0)
	}
	rare := func(topic, key, id string, at time.Time, d events.Data) error {
		v, err := encodeEvent(id, at, d)
		if err != nil {
			return err
		}
		k0 := len(arena)
		arena = append(arena, key...)
		v0 := len(arena)
		arena = append(arena, v...)
		add(topic, k0, v0)
		return nil
	}
	for i := range out.Expired {
		x := &out.Expired[i]
		// Keyed by its subject: the funding account of a funded request, as its start was.
		if err := rare(e.cfg.Topics.Journal, x.Data.Subject(), x.ID, x.Data.ExpiredAt, x.Data); err != nil {
			return nil, err
		}
	}
	// Notifications and top-up requests: keyed by account, ids derived in the fold.
	for i := range out.Notices {
		n := &out.Notices[i]
		if err := rare(e.cfg.Topics.Notifications, n.Data.Subject(), n.ID, n.At, n.Data); err != nil {
			return nil, err
		}
	}
	at := st.Watermark()
	for _, l := range out.Limits {
		id := events.DerivedID(fmt.Sprintf("limits/%d/%d", b.id, st.Offset()), l.Key()+"/"+itoa(l.FactorPermille))
		if err := rare(e.cfg.Topics.Limits, l.Key(), id, at, l); err != nil {
			return nil, err
		}
	}
	var causeBuf [64]byte
	var idBuf [36]byte
	for _, a := range out.Touched {
		bu := st.BalanceInto(a, b.windows[:0])
		b.windows = bu.Allowance[:0]
		// events.DerivedID(fmt.Sprintf("balance/%d/%d", b.id, a.Offset), a.ID)
		c := append(causeBuf[:0], "balance/"...)
		c = strconv.AppendInt(c, int64(b.id), 10)
		c = append(c, '/')
		c = strconv.AppendInt(c, a.Offset, 10)
		id := events.AppendDerivedID(idBuf[:0], string(c), a.ID)
		k0 := len(arena)
		arena = append(arena, a.ID...)
		v0 := len(arena)
		arena = appendBalanceEvent(arena, id, at, &bu)
		add(e.cfg.Topics.Balances, k0, v0)
	}
	// Slice the arena only now: appends above may have moved it.
	for i, sp := range spans {
		msgs = append(msgs, kafka.Message{Topic: topics[i], Key: arena[sp.key[0]:sp.key[1]:sp.key[1]], Value: arena[sp.val[0]:sp.val[1]:sp.val[1]]})
	}
	b.outMsg, b.arena, b.spans, b.topics = msgs, arena, spans, topics
	return msgs, nil
}

func (b *batcher) stateRecords(snap fold.Snapshot) []kafka.Message {
	msgs := b.stMsg[:0]
	arena := slices.Grow(b.stArena[:0], len(b.out.Touched)*accountRecordBytesEst)
	ends := b.ends[:0]
	for _, a := range b.out.Touched {
		arena = append(arena, "a/"...)
		arena = append(arena, a.ID...)
		ends = append(ends, len(arena))
		arena = encodeAccountRecord(arena, b.id, a)
		ends = append(ends, len(arena))
	}
	start := 0
	for i := 0; i < len(ends); i += 2 {
		msgs = append(msgs, kafka.Message{Key: arena[start:ends[i]:ends[i]], Value: arena[ends[i]:ends[i+1]:ends[i+1]]})
		start = ends[i+1]
	}
	msgs = append(msgs, kafka.Message{Key: partitionKey(b.id), Value: encodeSnapshotRecord(snap)})
	b.stMsg, b.stArena, b.ends = msgs, arena, ends
	return msgs
}

// restore reads the whole ledger-state topic over d (latest record per key wins; a key
// always lives in one partition of that topic, so its records are read in order) and
// returns a fold state per partition in ids, restored. The topic's partitions are read and
// decoded concurrently.
func restore(ctx context.Context, d *kafka.Dialer, brokers []string, topic string, cfg fold.Config, ids []int32) (map[int32]*fold.State, error) {
	want := map[int32]bool{}
	states := map[int32]*fold.State{}
	for _, id := range ids {
		want[id] = true
		states[id] = fold.New(cfg, id)
	}
	var mu sync.Mutex
	snaps := map[int32]fold.Snapshot{}
	err := readAll(ctx, d, brokers, topic, true, nil, func(m kafka.Message) error {
		p, a, snap, err := decodeRecord(m.Value)
		if err != nil {
			return fmt.Errorf("ledger: restore: record %s/%d/%d: %w", topic, m.Partition, m.Offset, err)
		}
		if !want[p] {
			return nil
		}
		mu.Lock()
		if a != nil {
			states[p].RestoreAccount(a)
		} else {
			snaps[p] = *snap
		}
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	for id, s := range snaps {
		states[id].RestoreSnapshot(s)
	}
	return states, nil
}

// RecordTimeNs is m's Kafka record timestamp in ns (fold.Input.RecordTimeNs), 0 when the
// record carries none.
func RecordTimeNs(m kafka.Message) int64 {
	if m.Time.IsZero() || m.Time.UnixMilli() <= 0 {
		return 0
	}
	return m.Time.UnixNano()
}

// ReadAll calls fn for every message of every partition of topic, up to each partition's
// end when the call starts, partitions one after the other.
func ReadAll(ctx context.Context, brokers []string, topic string, fn func(kafka.Message) error) error {
	return readAll(ctx, kafka.DefaultDialer, brokers, topic, false, nil, fn)
}

// ReadAllTLS is ReadAll over tc (the KAFKA_TLS_* client config; nil = plaintext).
func ReadAllTLS(ctx context.Context, brokers []string, tc *tls.Config, topic string, fn func(kafka.Message) error) error {
	return readAll(ctx, kafkax.Dialer(tc), brokers, topic, false, nil, fn)
}

// ReadFromTLS is ReadAllTLS from the offsets in from (per partition; a partition not in it
// is read from its first offset) to the end offsets at the call.
func ReadFromTLS(ctx context.Context, brokers []string, tc *tls.Config, topic string, from map[int]int64, fn func(kafka.Message) error) error {
	return readAll(ctx, kafkax.Dialer(tc), brokers, topic, false, from, fn)
}

func readAll(ctx context.Context, d *kafka.Dialer, brokers []string, topic string, parallel bool, from map[int]int64, fn func(kafka.Message) error) error {
	conn, err := d.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return fmt.Errorf("ledger: dial %s: %w", brokers[0], err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return fmt.Errorf("ledger: partitions of %s: %w", topic, err)
	}
	if !parallel {
		for _, p := range parts {
			if err := readPartition(ctx, d, brokers, topic, p.ID, from[p.ID], fn); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make(chan error, len(parts))
	for _, p := range parts {
		go func(id int) { errs <- readPartition(ctx, d, brokers, topic, id, from[id], fn) }(p.ID)
	}
	var first error
	for range parts {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func readPartition(ctx context.Context, d *kafka.Dialer, brokers []string, topic string, part int, from int64, fn func(kafka.Message) error) error {
	lc, err := d.DialLeader(ctx, "tcp", brokers[0], topic, part)
	if err != nil {
		return fmt.Errorf("ledger: leader of %s/%d: %w", topic, part, err)
	}
	first, last, err := lc.ReadOffsets()
	lc.Close()
	if err != nil {
		return fmt.Errorf("ledger: offsets of %s/%d: %w", topic, part, err)
	}
	first = max(first, from)
	if last <= first {
		return nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: part, MinBytes: 1,
		MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond, QueueCapacity: 10_000, ReadLagInterval: -1, Dialer: d})
	defer r.Close()
	if err := r.SetOffset(first); err != nil {
		return err
	}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return fmt.Errorf("ledger: read %s/%d: %w", topic, part, err)
		}
		if err := fn(m); err != nil {
			return err
		}
		if m.Offset >= last-1 {
			return nil
		}
	}
}

// Account returns the view of one account, or false when no assigned partition knows it.
func (e *Engine) Account(id string) (view.Account, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	for _, p := range e.parts {
		p.mu.Lock()
		a := p.st.Account(id)
		if a == nil {
			p.mu.Unlock()
			continue
		}
		v := accountView(p.st, a, e.cfg.Fold)
		p.mu.Unlock()
		return v, true
	}
	return view.Account{}, false
}

func accountView(st *fold.State, a *fold.Account, cfg fold.Config) view.Account {
	bu := st.Balance(a)
	v := view.Account{AccountID: a.ID, Tier: bu.Tier, Priority: a.Priority, Suspended: a.Suspended,
		AvailableMicros: a.AvailableMicros, HeldMicros: a.HeldMicros, OverageMicros: a.OverageMicros, OpenHolds: len(a.Holds),
		Grants: []view.Grant{}, Allowance: []view.Allowance{},
		Limits:   view.Limits{HistoryFactorPermille: a.HistoryFactor(), Endpoints: map[string]map[string]int32{}},
		Position: view.Position{Partition: st.Partition(), Offset: a.Offset, Watermark: st.Watermark()}}
	for _, g := range a.Grants {
		vg := view.Grant{GrantID: g.ID, AmountMicros: g.Amount, RemainingMicros: g.Remaining, Priority: g.Priority}
		if g.ExpiresNs != 0 {
			t := time.Unix(0, g.ExpiresNs).UTC()
			vg.ExpiresAt = &t
		}
		v.Grants = append(v.Grants, vg)
	}
	tier, _ := cfg.Book.Tier(a.Tier)
	for i, w := range bu.Allowance {
		lim := tier.Allowance[i].Micros
		v.Allowance = append(v.Allowance, view.Allowance{Window: w.Window, Start: w.Start, LimitMicros: lim, UsedMicros: w.UsedMicros, RemainingMicros: max(0, lim-w.UsedMicros)})
	}
	if t := a.Billing.TermsOf(); t != nil {
		v.OrganizationID = t.OrganizationID
		if t.PlanID != "" {
			v.Subscription = &view.Subscription{PlanID: t.PlanID, AnchorAt: time.Unix(0, t.AnchorNs).UTC(), PendingPlanID: t.PendingPlanID}
		}
	}
	v.FundingAccountID = a.FundingAccountID
	v.Projects = projectsView(st, a)
	p := st.Period(a)
	v.Period = &view.Period{Start: time.Unix(0, p.StartNs).UTC(), End: time.Unix(0, p.EndNs).UTC(), AllocationMicros: p.AllocationMicros,
		UsedMicros: p.UsedMicros, ByEndpoint: make(map[string]view.EndpointUsage, len(p.ByEndpoint))}
	for _, u := range p.ByEndpoint {
		v.Period.ByEndpoint[u.Endpoint] = view.EndpointUsage{Requests: u.Requests, ChargedMicros: u.ChargedMicros}
	}
	for name := range cfg.Book.Endpoints {
		m := map[string]int32{}
		for _, pr := range []string{events.PriorityCritical, events.PriorityStandard, events.PriorityBatch} {
			m[pr] = st.EndpointFactor(name, pr)
		}
		v.Limits.Endpoints[name] = m
	}
	return v
}

// projectsView lists a's project budgets with their spending in the month of the partition's
// log time: a budget whose spending counts an earlier month shows the current month, 0 spent
// (the admitter reads balance.updated the same way).
func projectsView(st *fold.State, a *fold.Account) []view.ProjectBudget {
	if len(a.Budgets) == 0 {
		return nil
	}
	w := st.Watermark()
	month := time.Date(w.Year(), w.Month(), 1, 0, 0, 0, 0, time.UTC)
	ps := make([]view.ProjectBudget, 0, len(a.Budgets))
	for _, b := range a.Budgets {
		start, spent := time.Unix(0, b.PeriodStartNs).UTC(), b.SpentMicros
		if start.Before(month) {
			start, spent = month, 0
		}
		ps = append(ps, view.ProjectBudget{ProjectID: b.ProjectID, BudgetMicros: b.BudgetMicros, PeriodStart: start,
			SpentMicros: spent, RemainingMicros: max(0, b.BudgetMicros-spent)})
	}
	return ps
}

// Entries returns a page of the account's cached journal lines.
func (e *Engine) Entries(id string, q view.EntriesQuery) (view.Entries, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	for _, p := range e.parts {
		p.mu.Lock()
		if p.st.Account(id) == nil {
			p.mu.Unlock()
			continue
		}
		lines, more := p.journal.page(id, q.Cursor, q.Limit, func(le *events.LedgerEntry) bool {
			return (q.From.IsZero() || !le.EffectiveAt.Before(q.From)) && (q.To.IsZero() || le.EffectiveAt.Before(q.To))
		})
		p.mu.Unlock()
		out := view.Entries{AccountID: id, Entries: make([]view.Entry, 0, len(lines))}
		for _, l := range lines {
			out.Entries = append(out.Entries, view.Entry{Seq: l.Seq, LedgerEntry: l.Entry})
		}
		if more && len(lines) > 0 {
			out.NextCursor = fmt.Sprint(lines[len(lines)-1].Seq)
		}
		return out, true
	}
	return view.Entries{}, false
}
