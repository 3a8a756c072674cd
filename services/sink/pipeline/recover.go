package pipeline

import (
	"context"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Recovery. A flush is one insert per table of the ranges of every partition it read, with
// one token (rows.GroupToken) and one intent (the token and all its ranges), recorded before
// the insert. When a generation starts a partition, the member recalls the recorded inserts
// with a range of that partition at or after its committed offset: the inserts that may have
// been made (or only begun) without their offsets being committed. Each is re-formed whole,
// every range of it (of this partition or any other, owned by this member or not) read again
// from Kafka by offset and filtered through a dedupe window warmed up from the W offsets
// before it, so the rows are the same as when the insert was first formed, and re-sent with
// the recorded token: ClickHouse drops it if the first attempt landed (in the tables and in
// the rollups) and stores it once if it did not. Whichever member re-sends an insert first,
// the others' copies are dropped the same way, so partitions may move between members (a
// rebalance, a member restarted elsewhere) at any point. The partition's messages in those
// ranges are then skipped by the batcher (observed by the live window only), and its offset
// is committed past them.

// recall recovers the recorded inserts covering partition key from offset from (the
// partition's first message in this run) and sets st's skip, known and full.
func (l *loop) recall(ctx context.Context, g *generation, st *partState, key partKey, from int64) error {
	// The flush in flight may hold this partition's previous range: its intent must be
	// recorded (and its insert done) before the recall reads the intents.
	if err := l.waitInflight(); err != nil {
		return err
	}
	ins, err := retry(ctx, l.p, "recall intents", func() ([]rows.Intent, error) {
		return l.p.intents.PendingIntents(ctx, l.p.cfg.GroupID, key.topic, key.partition, from, l.p.cfg.IntentsMax)
	})
	if err != nil {
		return err
	}
	st.known, st.full, st.skip = true, len(ins) >= l.p.cfg.IntentsMax, -1
	for _, in := range ins {
		if !l.recovered[in.Token] {
			if err := l.recoverInsert(ctx, g, in); err != nil {
				return err
			}
			l.recovered[in.Token] = true
		}
		for _, r := range in.Ranges {
			if r.Topic == key.topic && r.Partition == key.partition {
				st.skip = max(st.skip, r.Last)
			}
		}
	}
	if st.skip >= from {
		l.commit(g, map[string]map[int]int64{key.topic: {int(key.partition): st.skip + 1}})
	}
	return nil
}

// recoverInsert re-forms recorded insert in from Kafka and re-sends it with its token.
func (l *loop) recoverInsert(ctx context.Context, g *generation, in rows.Intent) error {
	bs := make([]*rows.Batch, 0, len(in.Ranges))
	for _, r := range in.Ranges {
		b, err := l.p.reform(g.ctx, r)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if g.ctx.Err() == nil {
				// A Kafka error: end the generation as a failed fetch does; the next one
				// recalls this insert again.
				l.p.Stats.KafkaErrors.Add(1)
				l.p.log.Warn("kafka: re-reading a recorded range failed; rejoining the consumer group", "range", r.String(), "error", err)
				g.stop()
			}
			return errGenerationEnded
		}
		bs = append(bs, b)
	}
	m := rows.Merge(bs)
	m.RecordedToken = in.Token
	if err := l.p.insertTables(ctx, m); err != nil {
		return err
	}
	l.p.Stats.Batches.Add(int64(len(bs)))
	l.p.Stats.ReplayedBatches.Add(int64(len(bs)))
	l.p.log.Info("re-sent a recorded insert", "token", in.Token, "ranges", len(in.Ranges), "rows", m.Rows())
	l.p.flushed(bs)
	return nil
}

// reform reads range r again from Kafka and returns its batch, its rows filtered as the
// batcher filtered them: undecodable messages and producer duplicates (against the W
// offsets before each message) widen the range and give no row.
func (p *Pipeline) reform(ctx context.Context, r rows.Range) (*rows.Batch, error) {
	from := r.First
	var win *window
	if w := p.cfg.DedupeWindow; w > 0 {
		win = newWindow(w)
		from = max(r.First-int64(w), 0)
	}
	rd := kafka.NewReader(kafka.ReaderConfig{
		Brokers: p.cfg.Brokers, Topic: r.Topic, Partition: int(r.Partition),
		MinBytes: 1, MaxBytes: p.cfg.FetchBytesMax, MaxWait: 50 * time.Millisecond,
		ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: time.Second, MaxAttempts: 3,
		Dialer:      kafkax.Dialer(p.cfg.TLS),
		ErrorLogger: readerLogger(p.log, "kafka reader (recovery)"),
	})
	defer rd.Close()
	if err := rd.SetOffset(from); err != nil {
		return nil, err
	}
	var dec events.Decoder
	b := &rows.Batch{}
	for {
		m, err := rd.FetchMessage(ctx)
		if err != nil {
			return nil, err
		}
		if m.Offset > r.Last {
			break // the range's last messages are gone (retention): nothing more to read
		}
		u, lg, k, reason := decodeMsg(&dec, m)
		if win != nil && win.observe(m.Offset, k, reason == "") {
			u, lg = nil, nil
		}
		if m.Offset >= r.First {
			b.Add(rows.Position{Topic: m.Topic, Partition: int32(m.Partition), Offset: m.Offset}, len(m.Value)+len(m.Key), u, lg)
		}
		if m.Offset == r.Last {
			break
		}
	}
	b.Range = r
	return b, nil
}
