package events

import (
	"encoding/json"
	"time"

	"github.com/segmentio/encoding/iso8601"
)

// Decoder decodes and validates events exactly as Decode does, faster on the hot types (those
// marked //codec:decode in types.go, parsed by generated code, codec_gen.go):
// request.started and request.finished, which make up nearly the whole events topic (the
// ledger's input), request.rejected, and ledger.entry, most of the journal topic (the sink
// reads both). Decode costs two reflective JSON parses and 14 to 17 allocations per event; a
// Decoder parses the plain shape every Tally producer writes by hand (about 2.3 to 3 times
// faster, 4 to 7 allocations; BenchmarkDecoder). That shape is one object, known keys each
// at most once, strings of printable ASCII without escapes, integers without fraction or
// exponent, UTC times.
// Anything else (another type, an escape, a non-ASCII byte, an unknown, repeated or missing
// field, null, a float, an offset time) goes to Decode unchanged, as does an event that fails
// Event.Validate, so the result, the validation and every error text (the dead-letter
// reason) are Decode's. decoder_test.go checks that both give deep-equal events on a corpus
// and under fuzzing (FuzzDecoder).
//
// The zero Decoder is ready to use. A Decoder is used by one goroutine: give each decoding
// goroutine its own. It keeps the last value of fields that repeat from event to event
// (specversion, source, endpoint, tier, ...; one string each, a fixed bound), so that their
// strings are not allocated again; decoded events may share those strings.
type Decoder struct {
	last [internSlots]string
}

// The envelope fields whose last value a Decoder keeps; the payload fields' slots
// (codec:"intern" in types.go) follow them, up to internSlots (codec_gen.go).
const (
	inSpecVersion = iota
	inSource
	inContentType
	envelopeSlots
)

// Decode decodes and validates one message exactly as the package function Decode does:
// the same event, or an error with the same text.
func (d *Decoder) Decode(b []byte) (Event, error) {
	if ev, ok := d.fast(b); ok {
		return ev, nil
	}
	return Decode(b)
}

// intern returns s as a string, reusing the slot's previous string when it is equal.
func (d *Decoder) intern(slot int, s []byte) string {
	if d.last[slot] != string(s) {
		d.last[slot] = string(s)
	}
	return d.last[slot]
}

// Bits of the fields a fast-path event has seen (a repeated key falls back).
const (
	envSpecVersion = 1 << iota
	envID
	envSource
	envType
	envTime
	envSubject
	envContentType
	envData
)

// envRequired are the envelope fields the fast path needs; Envelope has
// datacontenttype optional.
const envRequired = envSpecVersion | envID | envSource | envType | envTime | envSubject | envData

func (d *Decoder) fast(b []byte) (Event, bool) {
	var ev Event
	if len(b) > MaxEventBytes {
		return ev, false
	}
	s := scanner{b: b}
	if !s.open() {
		return ev, false
	}
	var seen uint
	for more := !s.closes(); more; {
		key, ok := s.key()
		if !ok {
			return ev, false
		}
		var bit uint
		switch string(key) {
		case "specversion":
			bit = envSpecVersion
			v, ok := s.str()
			if !ok {
				return ev, false
			}
			ev.SpecVersion = d.intern(inSpecVersion, v)
		case "id":
			bit = envID
			v, ok := s.str()
			if !ok {
				return ev, false
			}
			ev.ID = string(v)
		case "source":
			bit = envSource
			v, ok := s.str()
			if !ok {
				return ev, false
			}
			ev.Source = d.intern(inSource, v)
		case "type":
			bit = envType
			v, ok := s.str()
			if !ok {
				return ev, false
			}
			if ev.Type, ok = fastType(v); !ok {
				return ev, false
			}
		case "time":
			bit = envTime
			if ev.Time, ok = s.time(); !ok {
				return ev, false
			}
		case "subject":
			bit = envSubject
			v, ok := s.str()
			if !ok {
				return ev, false
			}
			ev.Subject = string(v)
		case "datacontenttype":
			bit = envContentType
			v, ok := s.str()
			if !ok {
				return ev, false
			}
			ev.DataContentType = d.intern(inContentType, v)
		case "data":
			bit = envData
			if seen&envType == 0 || seen&envSubject == 0 {
				return ev, false // the payload parser needs the type; producers write it first
			}
			start := s.i
			ev.Payload, ok = d.decodePayload(&s, ev.Type, ev.Subject)
			if !ok {
				return ev, false
			}
			ev.Data = json.RawMessage(b[start:s.i:s.i])
		default:
			return ev, false
		}
		if seen&bit != 0 {
			return ev, false
		}
		seen |= bit
		if more, ok = s.next(); !ok {
			return ev, false
		}
	}
	if seen&envRequired != envRequired || !s.end() {
		return ev, false
	}
	if ev.Validate() != nil {
		return ev, false // Decode gives the error text
	}
	return ev, true
}

// account returns an account id, sharing the subject's string when equal (in a valid event the
// subject is the funding account when one is named, else the account).
func account(v []byte, subject string) string {
	if string(v) == subject {
		return subject
	}
	return string(v)
}

// The readers of one field's value that the generated parsers (codec_gen.go) call.

// intTo reads an integer into dst.
func (s *scanner) intTo(dst *int64) bool {
	v, ok := s.int()
	*dst = v
	return ok
}

// timeTo reads a UTC time into dst.
func (s *scanner) timeTo(dst *time.Time) bool {
	v, ok := s.time()
	*dst = v
	return ok
}

func (d *Decoder) internStr(s *scanner, slot int, dst *string) bool {
	v, ok := s.str()
	if ok {
		*dst = d.intern(slot, v)
	}
	return ok
}

// accountStr reads an account id, sharing the subject's string when equal.
func accountStr(s *scanner, subject string, dst *string) bool {
	v, ok := s.str()
	if ok {
		*dst = account(v, subject)
	}
	return ok
}

func plainStr(s *scanner, dst *string) bool {
	v, ok := s.str()
	if ok {
		*dst = string(v)
	}
	return ok
}

// scanner reads the plain JSON subset of the fast path; every method reports false on
// anything outside it.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// open consumes '{'.
func (s *scanner) open() bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '{' {
		s.i++
		return true
	}
	return false
}

// closes consumes '}' if the object is empty.
func (s *scanner) closes() bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return true
	}
	return false
}

// next consumes ',' (more members: true) or '}' (the end of the object: false).
func (s *scanner) next() (more, ok bool) {
	s.ws()
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case ',':
			s.i++
			return true, true
		case '}':
			s.i++
			return false, true
		}
	}
	return false, false
}

// end reports whether only whitespace is left.
func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// key reads a member name and its ':'.
func (s *scanner) key() ([]byte, bool) {
	k, ok := s.str()
	if !ok {
		return nil, false
	}
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == ':' {
		s.i++
		return k, true
	}
	return nil, false
}

// str reads a string of printable ASCII without escapes and returns its content.
func (s *scanner) str() ([]byte, bool) {
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			s.i = j + 1
			return s.b[start:j], true
		case c < 0x20 || c >= 0x7f || c == '\\':
			return nil, false
		}
	}
	return nil, false
}

// int reads an integer: an optional '-', then 0 or a digit string without a leading zero,
// that fits an int64, followed by a delimiter (not '.', 'e' or 'E').
func (s *scanner) int() (int64, bool) {
	s.ws()
	j := s.i
	neg := j < len(s.b) && s.b[j] == '-'
	if neg {
		j++
	}
	start := j
	var v uint64
	for j < len(s.b) && '0' <= s.b[j] && s.b[j] <= '9' {
		if j-start >= 18 { // 18 digits always fit; longer falls back
			return 0, false
		}
		v = v*10 + uint64(s.b[j]-'0')
		j++
	}
	n := j - start
	if n == 0 || (n > 1 && s.b[start] == '0') || (neg && s.b[start] == '0') {
		return 0, false
	}
	if j < len(s.b) {
		switch s.b[j] {
		case ',', '}', ' ', '\t', '\n', '\r':
		default:
			return 0, false
		}
	}
	s.i = j
	if neg {
		return -int64(v), true
	}
	return int64(v), true
}

// time reads a UTC RFC 3339 time ("...Z") with the parser Decode uses.
func (s *scanner) time() (time.Time, bool) {
	v, ok := s.str()
	if !ok || len(v) == 0 || v[len(v)-1] != 'Z' {
		return time.Time{}, false
	}
	t, err := iso8601.Parse(string(v))
	return t, err == nil
}
