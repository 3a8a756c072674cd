package events_test

import (
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// BenchmarkDecode measures decoding (strict, validated) one request.started event, the
// consumers' per-message cost.
func BenchmarkDecode(b *testing.B) {
	ev, err := events.New("bench", time.Now(), samples()[0])
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := ev.Encode()
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := events.Decode(raw); err != nil {
			b.Fatal(err)
		}
	}
}
