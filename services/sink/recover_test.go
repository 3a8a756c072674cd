package sink_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/sink"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/services/sink/pipeline"
	"github.com/tallyhq/tally/services/sink/rows"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// failFromStore fails every insert from its from-th call on: a ClickHouse that went away
// for good after the intent of a flush was recorded.
type failFromStore struct {
	rows.Storage
	from int64
	n    atomic.Int64
}

func (s *failFromStore) BatchInsert(ctx context.Context, b *rows.Batch) error {
	if s.n.Add(1) >= s.from {
		return errors.New("injected: ClickHouse is gone")
	}
	return s.Storage.BatchInsert(ctx, b)
}

// TestSinkRecoversFlushesSpanningPartitions: a flush is one insert per table over every
// partition the sink read, recorded (token and ranges) before it is inserted. A sink stopped
// after recording such a flush, whether the insert landed (stopped before the commit) or not
// (ClickHouse failed it), is followed by one or by two members of the same group, which split
// the partitions between them: each recovers the recorded flushes that touch its partitions
// by re-reading every range of them from Kafka, also the other member's, and re-sending them
// with the recorded token. Every event is stored once, in the tables and in the rollups.
func TestSinkRecoversFlushesSpanningPartitions(t *testing.T) {
	for _, c := range []struct {
		name     string
		inserted bool // the recorded flush was inserted before the stop
		members  int
	}{
		{"inserted/one member", true, 1},
		{"inserted/two members", true, 2},
		{"not inserted/one member", false, 1},
		{"not inserted/two members", false, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			const n = crashRequests
			k := kafkatest.Start(t)
			ch := chtest.Config(t)
			testevents.Produce(t, k.Brokers, testevents.Stream(t, k.Topics, n, 11, time.Now().UTC().Add(-time.Hour)))
			cfg := testConfig(k, ch)
			// The first flush is cut by rows at the whole stream (2n events, n journal lines),
			// with no timer before it: it cannot be cut until every partition's messages are
			// buffered, so it spans every partition whatever order the partitions are fetched in.
			// (Cut earlier, its width depended on that order: the first 2n rows came from as few
			// as 4 of the 8 partitions in about one run in ten.)
			cfg.BatchRowsMax, cfg.BatchWaitMs = 3*n, 60_000
			cfg.RetryAttemptsMax = 2
			hooks := pipeline.Hooks{AfterInsert: func() error { return errCrash }}
			if !c.inserted {
				// Every insert fails, after the flush's intent was recorded.
				failing := &failFromStore{from: 1}
				hooks = pipeline.Hooks{WrapStorage: func(s rows.Storage) rows.Storage { failing.Storage = s; return failing }}
			}
			_, _, done := start(t, cfg, hooks)
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("the first sink stopped without an error")
				}
			case <-time.After(2 * time.Minute):
				t.Fatal("the first sink did not stop")
			}
			conn := openCH(t, ch)
			stored := chtest.Count(t, conn, "SELECT count() FROM usage_events") + chtest.Count(t, conn, "SELECT count() FROM ledger_entries")
			widest := chtest.Count(t, conn, "SELECT max(c) FROM (SELECT token, count() AS c FROM sink_intents GROUP BY token)")
			if (c.inserted && stored != 3*n) || (!c.inserted && stored != 0) {
				t.Fatalf("%d rows stored before the stop, want %d", stored, map[bool]int{true: 3 * n}[c.inserted])
			}
			// Each of two members owns 4 of the 8 partitions: 5 ranges span both.
			if widest < 5 {
				t.Fatalf("no recorded flush spans partitions (widest: %d ranges)", widest)
			}
			cfg.BatchWaitMs = 50
			var svcs []*sink.Service
			for i := 0; i < c.members; i++ {
				svc, _, _ := start(t, cfg, pipeline.Hooks{})
				svcs = append(svcs, svc)
			}
			waitCount(t, conn, "SELECT count() FROM usage_events", 2*n)
			waitCount(t, conn, "SELECT count() FROM ledger_entries", n)
			// When the flush was inserted, the rows are there before the members recover it:
			// wait for the re-sends themselves (not a fixed pause, which a loaded machine
			// outlasts), then check that they stored nothing twice.
			replayed := func() int64 {
				var r int64
				for _, s := range svcs {
					r += s.Pipeline().Stats.ReplayedBatches.Load()
				}
				return r
			}
			for deadline := time.Now().Add(90 * time.Second); replayed() < int64(widest) && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
			if r := replayed(); r < int64(widest) {
				t.Fatalf("%d ranges re-sent, want at least the recorded flush's %d", r, widest)
			}
			time.Sleep(500 * time.Millisecond)
			assertStoredOnce(t, conn, n)
			t.Logf("%d rows stored before the stop; widest recorded flush %d ranges; %d ranges re-sent", stored, widest, replayed())
		})
	}
}
