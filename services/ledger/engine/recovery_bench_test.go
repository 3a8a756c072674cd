package engine

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/pricebook"
)

// BenchmarkRecovery writes the state records of 1M accounts (one grant, one settled request
// and one open hold each) to the ledger-state topic, then times restore of every partition.
// Run with -benchtime 1x; RECOVERY_ACCOUNTS overrides the count.
func BenchmarkRecovery(b *testing.B) {
	n := 1_000_000
	if testing.Short() {
		n = 50_000
	}
	c := kafkatest.Start(b)
	cfg := fold.DefaultConfig(pricebook.Default())
	parts := int32(kafkatest.Partitions)
	w := kafkax.NewWriter(c.Brokers, c.Topics.LedgerState, kafkax.WriterConfig{BatchTimeout: 2 * time.Millisecond, BatchSize: 5000, WriteTimeout: 30 * time.Second, AttemptsMax: 3})
	w.BatchBytes = BatchBytesMax
	defer w.Close()
	at := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC).UnixNano()
	var bytes int64
	msgs := make([]kafka.Message, 0, 50_000)
	flush := func() {
		if err := w.WriteMessages(context.Background(), msgs...); err != nil {
			b.Fatal(kafkax.ShortErr(err))
		}
		msgs = msgs[:0]
	}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("acct-%07d", i)
		p := int32(i) % parts
		a := &fold.Account{ID: id, Offset: int64(i), AvailableMicros: 989_000, HeldMicros: 10_000, GrantedMicros: 1_000_000, ChargedMicros: 1000, SettledOK: 1,
			Grants: []fold.Grant{{ID: "grant-" + id, EventID: fold.ParseUUID("01a211a1-e5b0-78f5-bfff-ede27dab8a44"), Amount: 1_000_000, Remaining: 989_000}},
			Holds: []fold.Hold{{RequestID: "req-2-" + id, EventID: fold.ParseUUID("01a211a1-e5b9-7859-a887-f4c563e81c55"), Endpoint: "codex.responses", Priority: 1,
				Funding: 1, HoldMicros: 10_000, StartNs: at, ExpiresNs: at + int64(5*time.Minute)}}}
		// One settled request, remembered at the watermark.
		a.Dedupe.Append(0x9e3779b97f4a7c14, at)
		v := encodeAccountRecord(nil, p, a)
		bytes += int64(len(v))
		msgs = append(msgs, kafka.Message{Key: []byte("a/" + id), Value: v})
		if len(msgs) == cap(msgs) {
			flush()
		}
	}
	for p := int32(0); p < parts; p++ {
		msgs = append(msgs, kafka.Message{Key: partitionKey(p), Value: encodeSnapshotRecord(fold.Snapshot{Partition: p, WatermarkNs: at, Offset: int64(n)})})
	}
	flush()
	ids := []int32{0, 1, 2, 3}
	runtime.GC()
	b.ResetTimer()
	var states map[int32]*fold.State
	for i := 0; i < b.N; i++ {
		var err error
		states, err = restore(context.Background(), kafka.DefaultDialer, c.Brokers, c.Topics.LedgerState, cfg, ids)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	total := 0
	for _, s := range states {
		total += s.Len()
	}
	if total != n {
		b.Fatalf("restored %d accounts, want %d", total, n)
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/restore")
	b.ReportMetric(float64(n), "accounts")
	b.ReportMetric(float64(bytes)/float64(n), "record-bytes")
}
