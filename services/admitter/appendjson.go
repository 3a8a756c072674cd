package admitter

import (
	"strconv"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
)

// The admit path writes its two JSON documents (the answer and the request.started or
// request.rejected payload) by hand: encoding/json's reflection, its allocations (the
// allowance slice, the *time.Time, the intermediate buffers) and its GC load were a visible
// share of each admit. appendjson_test.go checks both byte for byte against encoding/json
// (of admitResponse and of the events types), so neither can drift from the contract.

// appendAdmit appends the JSON of the admit answer for req and d (what
// json.Marshal(s.admitResponse(req, d)) gives).
func (s *Service) appendAdmit(b []byte, req *api.AdmitRequest, d *decide.Decision) []byte {
	b = append(b, `{"request_id":`...)
	b = appendJSONString(b, req.RequestID)
	b = appendBool(append(b, `,"allowed":`...), d.Allowed)
	if r := d.Reason.String(); r != "" {
		b = appendJSONString(append(b, `,"reason":`...), r)
	}
	if !d.Allowed && d.RetryAfterMs != 0 {
		b = strconv.AppendInt(append(b, `,"retry_after_ms":`...), d.RetryAfterMs, 10)
	}
	if f := d.Funding.String(); f != "" {
		b = appendJSONString(append(b, `,"funding":`...), f)
	}
	b = appendJSONString(append(b, `,"tier":`...), d.Tier)
	b = appendJSONString(append(b, `,"priority":`...), d.Priority.String())
	b = appendField(b, `,"estimate_micros":`, d.EstimateMicros)
	b = appendField(b, `,"reserved_micros":`, d.HoldMicros+d.AllowanceMicros)
	b = appendField(b, `,"hold_micros":`, d.HoldMicros)
	b = appendField(b, `,"allowance_micros":`, d.AllowanceMicros)
	if d.Allowed {
		b = appendTime(append(b, `,"hold_expires_at":`...), d.HoldExpiresAtMs)
	}
	b = appendField(b, `,"remaining":{"available_micros":`, d.AvailableMicros)
	b = append(b, `,"allowance":[`...)
	for i := 0; i < d.NumWindows; i++ {
		w := &d.Windows[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(append(b, `{"name":`...), w.Name)
		b = appendField(b, `,"limit_micros":`, w.LimitMicros)
		b = appendField(b, `,"used_micros":`, w.UsedMicros)
		b = appendField(b, `,"remaining_micros":`, w.RemainingMicros)
		b = appendTime(append(b, `,"resets_at":`...), w.ResetsAtMs)
		b = append(b, '}')
	}
	b = appendField(b, `],"rate_per_minute":`, d.RatePerMinute)
	b = appendField(b, `,"burst":`, d.Burst)
	b = appendField(b, `,"rate_remaining":`, d.RateRemaining)
	b = appendField(b, `,"concurrency_limit":`, d.ConcurrencyLimit)
	b = appendField(b, `,"in_flight":`, d.InFlight)
	b = appendField(b, `,"endpoint_in_flight":`, d.EndpointInFlight)
	b = appendField(b, `,"endpoint_capacity":`, d.EndpointCapacity)
	b = appendField(b, `,"load_factor_permille":`, d.LoadFactorPermille)
	b = appendField(b, `,"history_factor_permille":`, d.HistoryFactorPermille)
	b = appendJSONString(append(b, `},"price_book_version":`...), s.book.Version)
	return append(b, '}')
}

// appendPayload appends the JSON of the admit path's event payloads (what json.Marshal
// gives); ok is false for any other type.
func appendPayload(b []byte, data events.Data) ([]byte, bool) {
	switch e := data.(type) {
	case events.RequestStarted:
		if t := e.HoldExpiresAt; t.Location() != time.UTC || t.Year() < 0 || t.Year() > 9999 {
			return b, false // encoding/json's rules (and errors) for other times
		}
		b = appendIDs(b, e.RequestID, e.AccountID, e.Endpoint, e.Model)
		b = appendJSONString(append(b, `,"tier":`...), e.Tier)
		b = appendJSONString(append(b, `,"priority":`...), e.Priority)
		b = appendJSONString(append(b, `,"funding":`...), e.Funding)
		b = appendUnits(append(b, `,"estimate":`...), &e.Estimate)
		b = appendField(b, `,"estimate_micros":`, e.EstimateMicros)
		b = appendField(b, `,"hold_micros":`, e.HoldMicros)
		b = appendField(b, `,"allowance_micros":`, e.AllowanceMicros)
		b = append(b, `,"hold_expires_at":"`...)
		b = append(e.HoldExpiresAt.AppendFormat(b, time.RFC3339Nano), '"')
		b = appendJSONString(append(b, `,"price_book_version":`...), e.PriceBookVersion)
		return append(appendOrigin(b, e.KeyID, e.ClientAddr), '}'), true
	case events.RequestRejected:
		b = appendIDs(b, e.RequestID, e.AccountID, e.Endpoint, e.Model)
		b = appendJSONString(append(b, `,"tier":`...), e.Tier)
		b = appendJSONString(append(b, `,"priority":`...), e.Priority)
		b = appendJSONString(append(b, `,"reason":`...), e.Reason)
		b = appendField(b, `,"retry_after_ms":`, e.RetryAfterMs)
		b = appendField(b, `,"estimate_micros":`, e.EstimateMicros)
		b = appendJSONString(append(b, `,"price_book_version":`...), e.PriceBookVersion)
		return append(appendOrigin(b, e.KeyID, e.ClientAddr), '}'), true
	}
	return b, false
}

func appendIDs(b []byte, requestID, accountID, endpoint, model string) []byte {
	b = appendJSONString(append(b, `{"request_id":`...), requestID)
	b = appendJSONString(append(b, `,"account_id":`...), accountID)
	b = appendJSONString(append(b, `,"endpoint":`...), endpoint)
	if model != "" {
		b = appendJSONString(append(b, `,"model":`...), model)
	}
	return b
}

func appendOrigin(b []byte, keyID, clientAddr string) []byte {
	if keyID != "" {
		b = appendJSONString(append(b, `,"key_id":`...), keyID)
	}
	if clientAddr != "" {
		b = appendJSONString(append(b, `,"client_addr":`...), clientAddr)
	}
	return b
}

func appendUnits(b []byte, u *events.Units) []byte {
	b = append(b, '{')
	n := len(b)
	sep := func(b []byte) []byte {
		if len(b) > n {
			b = append(b, ',')
		}
		return b
	}
	if u.VideoSeconds != 0 {
		b = strconv.AppendInt(append(sep(b), `"video_seconds":`...), u.VideoSeconds, 10)
	}
	if u.Resolution != "" {
		b = appendJSONString(append(sep(b), `"resolution":`...), u.Resolution)
	}
	if u.TokensIn != 0 {
		b = strconv.AppendInt(append(sep(b), `"tokens_in":`...), u.TokensIn, 10)
	}
	if u.TokensOut != 0 {
		b = strconv.AppendInt(append(sep(b), `"tokens_out":`...), u.TokensOut, 10)
	}
	if u.ComputeMs != 0 {
		b = strconv.AppendInt(append(sep(b), `"compute_ms":`...), u.ComputeMs, 10)
	}
	return append(b, '}')
}

func appendField(b []byte, key string, v int64) []byte {
	return strconv.AppendInt(append(b, key...), v, 10)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, "true"...)
	}
	return append(b, "false"...)
}

// appendTime appends Unix milliseconds as a quoted RFC 3339 UTC time, as time.Time's
// MarshalJSON does for time.UnixMilli(ms).UTC().
func appendTime(b []byte, ms int64) []byte {
	b = append(b, '"')
	return append(time.UnixMilli(ms).UTC().AppendFormat(b, time.RFC3339Nano), '"')
}
