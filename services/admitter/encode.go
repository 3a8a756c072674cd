package admitter

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tallyhq/tally/shared/events"
)

// encode builds the structured-mode CloudEvents JSON of data with a fresh UUIDv7, like
// events.New + Event.Encode, but with the events append writer (events.AppendEnvelopeHead,
// events.AppendData): encoding/json would re-scan and compact the already-encoded payload
// (json.RawMessage) on every event, which was a visible share of the admit path.
// encode_test.go checks that events.Decode reads back exactly what events.New would have built.
func encode(source string, now time.Time, data events.Data) ([]byte, string, error) {
	return encodeTo(make([]byte, 0, eventBytesEst), source, now, data)
}

// eventBytesEst is the initial capacity of a buffer an event or an admit answer is written
// into (encode, bodyPool): an admit event and its answer fit, a larger one grows the buffer.
const eventBytesEst = 1024

// encodeTo is encode appending to b[:0].
func encodeTo(b []byte, source string, now time.Time, data events.Data) ([]byte, string, error) {
	if err := data.Validate(); err != nil {
		return nil, "", fmt.Errorf("admitter: %s: %w", data.EventType(), err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, "", fmt.Errorf("admitter: event id: %w", err)
	}
	var idBuf [36]byte
	b = events.AppendEnvelopeHead(b[:0], events.AppendUUID(idBuf[:0], id), source, data.EventType(), now, data.Subject())
	var ok bool
	if b, ok = events.AppendData(b, data); !ok {
		payload, err := json.Marshal(data)
		if err != nil {
			return nil, "", fmt.Errorf("admitter: encode %s: %w", data.EventType(), err)
		}
		b = append(b, payload...)
	}
	b = append(b, '}')
	return b, data.EventType(), nil
}
