package events

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// The append writer: the one hand-written JSON encoder of events, shared by every producer
// (the admitter's admit path, the ledger engine's hot outputs). encoding/json over the
// envelope re-scans and compacts the already-encoded data (json.RawMessage) and reflects over
// each payload, which was a visible share of both the admit path and the ledger end to end.
// Each function appends to dst and returns it; none allocates unless dst must grow. The
// payload appenders (AppendData, AppendRequestStarted, AppendLedgerEntry, ...) are generated
// from the Go types (codec_gen.go, the types marked //codec:append) and call the functions here.
//
// Every byte written is what encoding/json writes for the same value (append_test.go and
// FuzzAppendString check it), so the output is decoded by Decode (strict) like any other.

// AppendString appends s as a JSON string, byte for byte as encoding/json writes it: with
// the HTML-safe escapes (\u003c, \u003e, \u0026), \u2028 and \u2029 escaped, the short
// escapes \b \f \n \r \t, \u00XX for other control bytes, and each byte of invalid UTF-8
// replaced by \ufffd. (The loop is encoding/json's appendString with escapeHTML set.)
func AppendString[T ~string | ~[]byte](dst []byte, s T) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if htmlSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default: // other control bytes, '<', '>', '&'
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		n := min(len(s)-i, utf8.UTFMax)
		c, size := utf8.DecodeRuneInString(string(s[i : i+n])) // at most 4 bytes: no allocation
		switch {
		case c == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			start = i + size
		case c == '\u2028' || c == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xf])
			start = i + size
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"

// htmlSafe[b] is true for the ASCII bytes encoding/json writes as they are (escapeHTML set):
// printable ASCII and DEL, except '"', '\\', '<', '>' and '&'.
var htmlSafe = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\' && b != '<' && b != '>' && b != '&'
	}
	return t
}()

// AppendKeyString appends key (already JSON: `,"name":`) then v as a JSON string.
func AppendKeyString[T ~string | ~[]byte](dst []byte, key string, v T) []byte {
	return AppendString(append(dst, key...), v)
}

// AppendKeyInt appends key (already JSON: `,"name":`) then v in decimal.
func AppendKeyInt(dst []byte, key string, v int64) []byte {
	return strconv.AppendInt(append(dst, key...), v, 10)
}

// AppendKeyBool appends key (already JSON: `,"name":`) then true or false.
func AppendKeyBool(dst []byte, key string, v bool) []byte {
	return strconv.AppendBool(append(dst, key...), v)
}

// AppendTime appends t in UTC as a quoted RFC 3339 time with nanoseconds, as time.Time's
// MarshalJSON writes a UTC time (Event times are UTC; a time in another zone is written as
// the same instant in UTC, not with its offset as MarshalJSON would).
func AppendTime(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.UTC().AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

// AppendEnvelopeHead appends a structured-mode CloudEvent up to its "data": the caller
// appends the data (one JSON value, as encoding/json writes it) and then the closing brace
// ('}'), so the data needs no buffer of its own. The bytes equal Event.Encode's for an event
// with these fields (the Envelope field order).
func AppendEnvelopeHead[T ~string | ~[]byte](dst []byte, id T, source, typ string, at time.Time, subject string) []byte {
	dst = AppendKeyString(dst, `{"specversion":"1.0","id":`, id)
	dst = AppendKeyString(dst, `,"source":`, source)
	dst = AppendKeyString(dst, `,"type":`, typ)
	dst = AppendTime(append(dst, `,"time":`...), at)
	dst = AppendKeyString(dst, `,"subject":`, subject)
	return append(dst, `,"datacontenttype":"application/json","data":`...)
}

// AppendEnvelope appends a whole structured-mode CloudEvent with already-encoded data.
func AppendEnvelope(dst []byte, id, source, typ string, at time.Time, subject string, data []byte) []byte {
	dst = AppendEnvelopeHead(dst, id, source, typ, at, subject)
	dst = append(dst, data...)
	return append(dst, '}')
}

// plainTime reports whether AppendTime writes t as time.Time's MarshalJSON does.
func plainTime(t time.Time) bool {
	return t.Location() == time.UTC && t.Year() >= 0 && t.Year() <= 9999
}

// comma appends ',' unless nothing follows the object's opening brace, which ends at n.
func comma(dst []byte, n int) []byte {
	if len(dst) > n {
		dst = append(dst, ',')
	}
	return dst
}
