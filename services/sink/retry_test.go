package sink_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/services/sink/pipeline"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// flakyStore fails its first failures inserts and delays every insert: an unreliable, slow
// ClickHouse in front of the real one.
type flakyStore struct {
	rows.Storage
	failures atomic.Int64
	delay    time.Duration
}

func (s *flakyStore) BatchInsert(ctx context.Context, b *rows.Batch) error {
	time.Sleep(s.delay)
	if s.failures.Add(-1) >= 0 {
		return errors.New("injected: connection reset by ClickHouse")
	}
	return s.Storage.BatchInsert(ctx, b)
}

func TestSinkRetriesFailedInsertsAndBoundsItsBuffer(t *testing.T) {
	c := kafkatest.Start(t)
	ch := chtest.Config(t)
	const n = 1000
	testevents.Produce(t, c.Brokers, testevents.Stream(t, c.Topics, n, 5, time.Now().UTC().Add(-time.Hour)))
	cfg := testConfig(c, ch)
	cfg.BatchRowsMax, cfg.BatchBytesMax = 100_000, 64<<10
	flaky := &flakyStore{delay: 20 * time.Millisecond}
	flaky.failures.Store(3)
	svc, _, _ := start(t, cfg, pipeline.Hooks{WrapStorage: func(s rows.Storage) rows.Storage { flaky.Storage = s; return flaky }})
	conn := openCH(t, ch)
	waitCount(t, conn, "SELECT count() FROM usage_events", 2*n)
	waitCount(t, conn, "SELECT count() FROM ledger_entries", n)
	time.Sleep(200 * time.Millisecond)
	if got := chtest.Count(t, conn, "SELECT count() FROM usage_events"); got != 2*n {
		t.Fatalf("usage_events: %d rows after retries, want %d", got, 2*n)
	}
	st := &svc.Pipeline().Stats
	if st.InsertErrors.Load() != 3 {
		t.Fatalf("insert errors: %d, want the 3 injected", st.InsertErrors.Load())
	}
	// The buffer never passes the byte bound by more than one message (about 1 KiB here).
	if peak := st.BufferedBytesPeak.Load(); peak > cfg.BatchBytesMax+2<<10 {
		t.Fatalf("buffered %d bytes, bound %d", peak, cfg.BatchBytesMax)
	}
}

func TestSinkStopsAfterRetryBudgetAndIsNotReady(t *testing.T) {
	c := kafkatest.Start(t)
	ch := chtest.Config(t)
	testevents.Produce(t, c.Brokers, testevents.Stream(t, c.Topics, 10, 2, time.Now().UTC()))
	cfg := testConfig(c, ch)
	cfg.RetryAttemptsMax = 3
	flaky := &flakyStore{}
	flaky.failures.Store(1 << 40)
	svc, _, done := start(t, cfg, pipeline.Hooks{WrapStorage: func(s rows.Storage) rows.Storage { flaky.Storage = s; return flaky }})
	select {
	case err := <-done:
		if err == nil || svc.Pipeline().Stats.InsertErrors.Load() < 3 {
			t.Fatalf("Run ended with %v after %d insert errors", err, svc.Pipeline().Stats.InsertErrors.Load())
		}
	case <-time.After(time.Minute):
		t.Fatal("sink kept going after its retry budget")
	}
	if svc.Pipeline().Healthy() {
		t.Fatal("pipeline reports healthy after failing")
	}
	conn := openCH(t, ch)
	if got := chtest.Count(t, conn, "SELECT count() FROM usage_events"); got != 0 {
		t.Fatalf("%d rows stored though every insert failed", got)
	}
}
