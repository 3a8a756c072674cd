package sink_test

import (
	"context"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/services/sink/pipeline"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// copyOf is a producer's retry of m: the same key (so the same partition) and the same bytes.
func copyOf(m kafka.Message) kafka.Message {
	return kafka.Message{Topic: m.Topic, Key: m.Key, Value: m.Value}
}

// withCopies returns msgs with a copy of msgs[i] inserted before position at[i] (at == i+1:
// adjacent), and the number of copies.
func withCopies(msgs []kafka.Message, copies map[int][]int) ([]kafka.Message, int) {
	out := make([]kafka.Message, 0, len(msgs)+len(copies))
	n := 0
	for j, m := range msgs {
		for _, i := range copies[j] {
			out = append(out, copyOf(msgs[i]))
			n++
		}
		out = append(out, m)
	}
	for _, i := range copies[len(msgs)] {
		out = append(out, copyOf(msgs[i]))
		n++
	}
	return out, n
}

// assertStoredOnce checks every table and rollup against n requests stored exactly once.
func assertStoredOnce(t *testing.T, c clickhouse.Conn, n int) {
	t.Helper()
	if got, distinct := chtest.Count(t, c, "SELECT count() FROM usage_events"), chtest.Count(t, c, "SELECT uniqExact(event_id) FROM usage_events"); got != distinct || got != uint64(2*n) {
		t.Fatalf("usage_events: %d rows (without FINAL), %d distinct events, want %d of each", got, distinct, 2*n)
	}
	if got := chtest.Count(t, c, "SELECT count() FROM ledger_entries"); got != uint64(n) {
		t.Fatalf("ledger_entries: %d rows (without FINAL), want %d", got, n)
	}
	if got := chtest.Count(t, c, "SELECT toUInt64(sum(started)) FROM usage_1m"); got != uint64(n) {
		t.Fatalf("usage_1m started: %d, want %d (a duplicate was counted)", got, n)
	}
	if got := chtest.Count(t, c, "SELECT toUInt64(sum(finished)) FROM usage_1m"); got != uint64(n) {
		t.Fatalf("usage_1m finished: %d, want %d (a duplicate was counted)", got, n)
	}
	var cost uint64
	for i := 0; i < n; i++ {
		cost += uint64(1000 + i%7) // testevents.Stream's cost of request i
	}
	if got := chtest.Count(t, c, "SELECT toUInt64(sum(cost_micros)) FROM usage_1m"); got != cost {
		t.Fatalf("usage_1m cost_micros: %d, want %d over the distinct events", got, cost)
	}
	if got := chtest.Count(t, c, "SELECT toUInt64(sum(cost_micros)) FROM requests_v"); got != cost {
		t.Fatalf("requests_v cost_micros: %d, want %d", got, cost)
	}
}

// TestSinkDropsProducerDuplicates produces events twice (same bytes at two offsets): adjacent,
// a few hundred messages apart, three times, and copies of events already stored and
// committed by earlier flushes. Each copy is counted and none reaches a table or a rollup.
func TestSinkDropsProducerDuplicates(t *testing.T) {
	c := kafkatest.Start(t)
	ch := chtest.Config(t)
	const n = 2000
	msgs := testevents.Stream(t, c.Topics, n, 7, time.Now().UTC().Add(-time.Hour))
	half := len(msgs) / 2
	// Message i = 3r (started), 3r+1 (finished, events topic), 3r+2 (ledger entry, journal).
	first, copiesA := withCopies(msgs[:half], map[int][]int{
		11: {10}, 12: {11}, 15: {14}, // adjacent: started, finished, ledger entry
		400: {100, 101, 102}, 1300: {1000, 1001}, // a few hundred messages later
		2000: {1990}, 2001: {1990}, // three times in all
		half: {half - 1, half - 2, half - 3},
	})
	rest := msgs[half:]
	// The second part carries copies of the first part's events: they were stored and
	// committed by earlier flushes (across batch boundaries).
	second := make([]kafka.Message, 0, len(rest)+10)
	copiesB := 0
	copies := map[int][]int{5: {1}, 6: {1000}, 7: {2002}, 900: {half + 899}, 901: {half + 500}}
	for j, m := range rest {
		for _, i := range copies[j] { // indices into msgs
			second = append(second, copyOf(msgs[i]))
			copiesB++
		}
		second = append(second, m)
	}

	testevents.Produce(t, c.Brokers, first)
	cfg := testConfig(c, ch)
	cfg.BatchRowsMax = 700
	svc, _, _ := start(t, cfg, pipeline.Hooks{})
	conn := openCH(t, ch)
	// The first part is stored (its flushes committed) before the second is produced.
	waitCount(t, conn, "SELECT count() FROM usage_events", uint64(2*half/3))
	waitCount(t, conn, "SELECT count() FROM ledger_entries", uint64(half/3))
	batchesA := svc.Pipeline().Stats.Batches.Load()
	testevents.Produce(t, c.Brokers, second)
	waitCount(t, conn, "SELECT count() FROM usage_events", 2*n)
	waitCount(t, conn, "SELECT count() FROM ledger_entries", n)
	// Wait until every message, copies included, went through, then let a stray row show up.
	deadline := time.Now().Add(time.Minute)
	for svc.Pipeline().Stats.Messages.Load() < int64(len(first)+len(second)) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)

	assertStoredOnce(t, conn, n)
	st := &svc.Pipeline().Stats
	if got, want := st.Duplicates.Load(), int64(copiesA+copiesB); got != want {
		t.Fatalf("duplicates counted: %d, want %d", got, want)
	}
	if got := st.DeadLetters.Load(); got != 0 {
		t.Fatalf("dead letters: %d, want 0 (a duplicate is not dead-lettered)", got)
	}
	if batchesA < 2 || st.Batches.Load() <= batchesA {
		t.Fatalf("batches %d then %d: the copies did not span batch boundaries", batchesA, st.Batches.Load())
	}
	t.Logf("%d copies dropped, %d batches", copiesA+copiesB, st.Batches.Load())
}

// TestSinkDropsDuplicateAfterRestart stops a sink after its second flush's insert (the first
// flush committed, the second inserted but not committed), then produces copies of events
// stored before the stop, and restarts it: the warm-up reads the window back from Kafka, so
// the copies are not stored again and the rollups count them once.
func TestSinkDropsDuplicateAfterRestart(t *testing.T) {
	const n = crashRequests
	c, ch, cfg, msgs := runUntilCrash(t, 2)
	conn := openCH(t, ch)
	// Copies of stored events: the lowest and highest stored offsets of every partition of
	// both tables (the lowest were committed by the first flush; the highest are in the
	// flush that was inserted and not committed).
	byID := map[string]kafka.Message{}
	for _, m := range msgs {
		ev, err := events.Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		byID[ev.ID] = m
	}
	var dups []kafka.Message
	seen := map[string]bool{}
	for _, table := range []string{"usage_events", "ledger_entries"} {
		rs, err := conn.Query(context.Background(), "SELECT toString(argMin(event_id, kafka_offset)), toString(argMax(event_id, kafka_offset)) FROM "+table+" GROUP BY kafka_partition")
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var lo, hi string
			if err := rs.Scan(&lo, &hi); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{lo, hi} {
				m, ok := byID[id]
				if !ok {
					t.Fatalf("stored event %s was not produced", id)
				}
				if !seen[id] {
					seen[id] = true
					dups = append(dups, copyOf(m))
				}
			}
		}
		rs.Close()
	}
	if len(dups) == 0 {
		t.Fatal("nothing stored before the stop: the test would prove nothing")
	}
	before := chtest.Count(t, conn, "SELECT count() FROM usage_events") + chtest.Count(t, conn, "SELECT count() FROM ledger_entries")
	testevents.Produce(t, c.Brokers, dups)

	svc, _, _ := start(t, cfg, pipeline.Hooks{})
	waitCount(t, conn, "SELECT count() FROM usage_events", 2*n)
	waitCount(t, conn, "SELECT count() FROM ledger_entries", n)
	st := &svc.Pipeline().Stats
	deadline := time.Now().Add(time.Minute)
	for st.Duplicates.Load() < int64(len(dups)) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	assertStoredOnce(t, conn, n)
	if got := st.Duplicates.Load(); got != int64(len(dups)) {
		t.Fatalf("duplicates counted after the restart: %d, want %d", got, len(dups))
	}
	if st.WarmupMessages.Load() == 0 {
		t.Fatal("the restarted sink warmed up no window")
	}
	if st.ReplayedBatches.Load() == 0 {
		t.Fatal("the restarted sink re-formed no recorded batch")
	}
	t.Logf("%d rows stored before the stop; %d copies dropped after the restart; %d warm-up messages; %d replayed batches",
		before, len(dups), st.WarmupMessages.Load(), st.ReplayedBatches.Load())
}
