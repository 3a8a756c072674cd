package admitter

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/tallyhq/tally/shared/events"
)

// encode builds the structured-mode CloudEvents JSON of data with a fresh UUIDv7, like
// events.New + Event.Encode, but writes the envelope directly: encoding/json would re-scan
// and compact the already-encoded payload (json.RawMessage) on every event, which was a
// visible share of the admit path. The admit path's payloads are written by hand too
// (appendPayload). encode_test.go checks that events.Decode reads back
// exactly what events.New would have built.
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
	b = append(b[:0], `{"specversion":"1.0","id":"`...)
	b = append(b, id.String()...)
	b = append(b, `","source":`...)
	b = appendJSONString(b, source)
	b = append(b, `,"type":"`...)
	b = append(b, data.EventType()...)
	b = append(b, `","time":"`...)
	b = now.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","subject":`...)
	b = appendJSONString(b, data.Subject())
	b = append(b, `,"datacontenttype":"application/json","data":`...)
	var ok bool
	if b, ok = appendPayload(b, data); !ok {
		payload, err := json.Marshal(data)
		if err != nil {
			return nil, "", fmt.Errorf("admitter: encode %s: %w", data.EventType(), err)
		}
		b = append(b, payload...)
	}
	b = append(b, '}')
	return b, data.EventType(), nil
}

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD as in
// encoding/json.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
