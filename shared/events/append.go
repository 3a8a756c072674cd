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
// Each function appends to dst and returns it; none allocates unless dst must grow.
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

// AppendData appends the JSON of d as json.Marshal writes it, by hand for the hot payload
// types (request.started, request.rejected, ledger.entry, balance.updated); ok is false,
// and nothing is appended, for any other type or for a payload whose times encoding/json
// would write differently (not UTC) or refuse (a year outside [0, 9999]): the caller then
// uses json.Marshal.
func AppendData(dst []byte, d Data) (_ []byte, ok bool) {
	switch e := d.(type) {
	case RequestStarted:
		if !plainTime(e.HoldExpiresAt) {
			return dst, false
		}
		return AppendRequestStarted(dst, &e), true
	case RequestRejected:
		return AppendRequestRejected(dst, &e), true
	case LedgerEntry:
		if !plainTime(e.EffectiveAt) {
			return dst, false
		}
		return AppendLedgerEntry(dst, &e), true
	case BalanceUpdated:
		for i := range e.Allowance {
			if !plainTime(e.Allowance[i].Start) {
				return dst, false
			}
		}
		for i := range e.Expiring {
			if !plainTime(e.Expiring[i].ExpiresAt) {
				return dst, false
			}
		}
		for i := range e.Projects {
			if !plainTime(e.Projects[i].PeriodStart) {
				return dst, false
			}
		}
		return AppendBalanceUpdated(dst, &e), true
	}
	return dst, false
}

// plainTime reports whether AppendTime writes t as time.Time's MarshalJSON does.
func plainTime(t time.Time) bool {
	return t.Location() == time.UTC && t.Year() >= 0 && t.Year() <= 9999
}

// AppendRequestStarted appends the JSON of e (the field order and omitempty of the Go type).
// Its time is written in UTC (AppendTime).
func AppendRequestStarted(dst []byte, e *RequestStarted) []byte {
	dst = appendRequestIDs(dst, e.RequestID, e.AccountID, e.FundingAccountID, e.Endpoint, e.Model)
	dst = AppendKeyString(dst, `,"tier":`, e.Tier)
	dst = AppendKeyString(dst, `,"priority":`, e.Priority)
	dst = AppendKeyString(dst, `,"funding":`, e.Funding)
	dst = AppendUnits(append(dst, `,"estimate":`...), &e.Estimate)
	dst = AppendKeyInt(dst, `,"estimate_micros":`, e.EstimateMicros)
	dst = AppendKeyInt(dst, `,"hold_micros":`, e.HoldMicros)
	dst = AppendKeyInt(dst, `,"allowance_micros":`, e.AllowanceMicros)
	dst = AppendTime(append(dst, `,"hold_expires_at":`...), e.HoldExpiresAt)
	dst = AppendKeyString(dst, `,"price_book_version":`, e.PriceBookVersion)
	return append(appendOrigin(dst, e.KeyID, e.ClientAddr), '}')
}

// AppendRequestRejected appends the JSON of e (the field order and omitempty of the Go type).
func AppendRequestRejected(dst []byte, e *RequestRejected) []byte {
	dst = appendRequestIDs(dst, e.RequestID, e.AccountID, "", e.Endpoint, e.Model)
	dst = AppendKeyString(dst, `,"tier":`, e.Tier)
	dst = AppendKeyString(dst, `,"priority":`, e.Priority)
	dst = AppendKeyString(dst, `,"reason":`, e.Reason)
	dst = AppendKeyInt(dst, `,"retry_after_ms":`, e.RetryAfterMs)
	dst = AppendKeyInt(dst, `,"estimate_micros":`, e.EstimateMicros)
	dst = AppendKeyString(dst, `,"price_book_version":`, e.PriceBookVersion)
	return append(appendOrigin(dst, e.KeyID, e.ClientAddr), '}')
}

func appendRequestIDs(dst []byte, requestID, accountID, fundingAccountID, endpoint, model string) []byte {
	dst = AppendKeyString(dst, `{"request_id":`, requestID)
	dst = AppendKeyString(dst, `,"account_id":`, accountID)
	if fundingAccountID != "" {
		dst = AppendKeyString(dst, `,"funding_account_id":`, fundingAccountID)
	}
	dst = AppendKeyString(dst, `,"endpoint":`, endpoint)
	if model != "" {
		dst = AppendKeyString(dst, `,"model":`, model)
	}
	return dst
}

func appendOrigin(dst []byte, keyID, clientAddr string) []byte {
	if keyID != "" {
		dst = AppendKeyString(dst, `,"key_id":`, keyID)
	}
	if clientAddr != "" {
		dst = AppendKeyString(dst, `,"client_addr":`, clientAddr)
	}
	return dst
}

// AppendUnits appends the JSON of u (every field omitempty).
func AppendUnits(dst []byte, u *Units) []byte {
	dst = append(dst, '{')
	n := len(dst)
	sep := func(dst []byte, key string) []byte {
		if len(dst) > n {
			dst = append(dst, ',')
		}
		return append(dst, key...)
	}
	if u.VideoSeconds != 0 {
		dst = strconv.AppendInt(sep(dst, `"video_seconds":`), u.VideoSeconds, 10)
	}
	if u.Resolution != "" {
		dst = AppendString(sep(dst, `"resolution":`), u.Resolution)
	}
	if u.TokensIn != 0 {
		dst = strconv.AppendInt(sep(dst, `"tokens_in":`), u.TokensIn, 10)
	}
	if u.TokensOut != 0 {
		dst = strconv.AppendInt(sep(dst, `"tokens_out":`), u.TokensOut, 10)
	}
	if u.ComputeMs != 0 {
		dst = strconv.AppendInt(sep(dst, `"compute_ms":`), u.ComputeMs, 10)
	}
	return append(dst, '}')
}

// AppendLedgerEntry appends the JSON of le (the field order and omitempty of the Go type).
// Its time is written in UTC (AppendTime).
func AppendLedgerEntry(dst []byte, le *LedgerEntry) []byte {
	return AppendLedgerEntryFields(dst, le.EntryID, le.TransactionID, le.AccountID, le.LedgerAccount,
		le.AmountMicros, le.Kind, le.CauseEventID, le.RequestID, le.GrantID, le.EffectiveAt)
}

// AppendLedgerEntryFields is AppendLedgerEntry from the fields, so that a producer holding
// them elsewhere (ids in stack buffers) need not build a LedgerEntry.
func AppendLedgerEntryFields[T ~string | ~[]byte](dst []byte, entryID, transactionID T, accountID, ledgerAccount string,
	amountMicros int64, kind, causeEventID, requestID, grantID string, effectiveAt time.Time) []byte {
	dst = AppendKeyString(dst, `{"entry_id":`, entryID)
	dst = AppendKeyString(dst, `,"transaction_id":`, transactionID)
	dst = AppendKeyString(dst, `,"account_id":`, accountID)
	dst = AppendKeyString(dst, `,"ledger_account":`, ledgerAccount)
	dst = AppendKeyInt(dst, `,"amount_micros":`, amountMicros)
	dst = AppendKeyString(dst, `,"kind":`, kind)
	dst = AppendKeyString(dst, `,"cause_event_id":`, causeEventID)
	if requestID != "" {
		dst = AppendKeyString(dst, `,"request_id":`, requestID)
	}
	if grantID != "" {
		dst = AppendKeyString(dst, `,"grant_id":`, grantID)
	}
	dst = AppendTime(append(dst, `,"effective_at":`...), effectiveAt)
	return append(dst, '}')
}

// AppendBalanceUpdated appends the JSON of bu (the field order and omitempty of the Go
// type). Its times are written in UTC (AppendTime).
func AppendBalanceUpdated(dst []byte, bu *BalanceUpdated) []byte {
	dst = AppendKeyString(dst, `{"account_id":`, bu.AccountID)
	dst = AppendKeyString(dst, `,"tier":`, bu.Tier)
	dst = AppendKeyString(dst, `,"priority":`, bu.Priority)
	dst = AppendKeyBool(dst, `,"suspended":`, bu.Suspended)
	dst = AppendKeyInt(dst, `,"available_micros":`, bu.AvailableMicros)
	dst = AppendKeyInt(dst, `,"held_micros":`, bu.HeldMicros)
	dst = AppendKeyInt(dst, `,"overage_micros":`, bu.OverageMicros)
	if len(bu.Allowance) > 0 {
		dst = append(dst, `,"allowance":[`...)
		for i := range bu.Allowance {
			w := &bu.Allowance[i]
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendKeyString(dst, `{"window":`, w.Window)
			dst = AppendTime(append(dst, `,"start":`...), w.Start)
			dst = AppendKeyInt(dst, `,"used_micros":`, w.UsedMicros)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	if len(bu.Expiring) > 0 {
		dst = append(dst, `,"expiring":[`...)
		for i := range bu.Expiring {
			x := &bu.Expiring[i]
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendTime(append(dst, `{"expires_at":`...), x.ExpiresAt)
			dst = AppendKeyInt(dst, `,"remaining_micros":`, x.RemainingMicros)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	if bu.FundingAccountID != "" {
		dst = AppendKeyString(dst, `,"funding_account_id":`, bu.FundingAccountID)
	}
	if len(bu.Projects) > 0 {
		dst = append(dst, `,"projects":[`...)
		for i := range bu.Projects {
			p := &bu.Projects[i]
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendKeyString(dst, `{"project_id":`, p.ProjectID)
			dst = AppendKeyInt(dst, `,"budget_micros":`, p.BudgetMicros)
			dst = AppendTime(append(dst, `,"period_start":`...), p.PeriodStart)
			dst = AppendKeyInt(dst, `,"spent_micros":`, p.SpentMicros)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	dst = AppendKeyInt(dst, `,"partition":`, int64(bu.Partition))
	dst = AppendKeyInt(dst, `,"offset":`, bu.Offset)
	return append(dst, '}')
}
