package sink_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/services/sink/pipeline"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestSinkFlushesWhenSlowInsertEnds: batches whose wait runs out while a slow insert is in
// flight keep filling and are flushed when that insert ends; the last of them must not be
// left behind once the messages stop (no timer is running for it any more).
func TestSinkFlushesWhenSlowInsertEnds(t *testing.T) {
	c := kafkatest.Start(t)
	ch := chtest.Config(t)
	cfg := testConfig(c, ch)
	cfg.BatchWaitMs, cfg.BatchRowsMax = 20, 100_000
	var flushes atomic.Int64
	hooks := pipeline.Hooks{
		WrapStorage: func(s rows.Storage) rows.Storage { return slowStore{s, 200 * time.Millisecond} },
		FlushDone:   func([]*rows.Batch, time.Time) { flushes.Add(1) },
	}
	start(t, cfg, hooks)
	const waves, perWave = 6, 20
	at := time.Now().UTC().Add(-time.Hour)
	for w := 0; w < waves; w++ {
		// Fresh event ids each wave: every message is a distinct row.
		testevents.Produce(t, c.Brokers, testevents.Stream(t, c.Topics, perWave, 5, at.Add(time.Duration(w)*time.Second)))
		time.Sleep(50 * time.Millisecond)
	}
	conn := openCH(t, ch)
	waitCount(t, conn, "SELECT count() FROM usage_events", 2*waves*perWave)
	waitCount(t, conn, "SELECT count() FROM ledger_entries", waves*perWave)
	t.Logf("%d flushes for %d waves", flushes.Load(), waves)
}
