package admitter

import (
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
)

// The admit path writes its two JSON documents (the answer and the request.started or
// request.rejected event) by hand, with the events append writer: encoding/json's reflection,
// its allocations (the allowance slice, the *time.Time, the intermediate buffers) and its GC
// load were a visible share of each admit. appendjson_test.go checks both byte for byte
// against encoding/json (of admitResponse and of the events types), so neither can drift
// from the contract.

// appendAdmit appends the JSON of the admit answer for req and d (what
// json.Marshal(s.admitResponse(req, d)) gives).
func (s *Service) appendAdmit(b []byte, req *api.AdmitRequest, d *decide.Decision) []byte {
	b = events.AppendKeyString(b, `{"request_id":`, req.RequestID)
	b = events.AppendKeyBool(b, `,"allowed":`, d.Allowed)
	if r := d.Reason.String(); r != "" {
		b = events.AppendKeyString(b, `,"reason":`, r)
	}
	if !d.Allowed && d.RetryAfterMs != 0 {
		b = events.AppendKeyInt(b, `,"retry_after_ms":`, d.RetryAfterMs)
	}
	if f := d.Funding.String(); f != "" {
		b = events.AppendKeyString(b, `,"funding":`, f)
	}
	if d.FundingAccountID != "" {
		b = events.AppendKeyString(b, `,"funding_account_id":`, d.FundingAccountID)
	}
	b = events.AppendKeyString(b, `,"tier":`, d.Tier)
	b = events.AppendKeyString(b, `,"priority":`, d.Priority.String())
	b = events.AppendKeyInt(b, `,"estimate_micros":`, d.EstimateMicros)
	b = events.AppendKeyInt(b, `,"reserved_micros":`, d.HoldMicros+d.AllowanceMicros)
	b = events.AppendKeyInt(b, `,"hold_micros":`, d.HoldMicros)
	b = events.AppendKeyInt(b, `,"allowance_micros":`, d.AllowanceMicros)
	if d.Allowed {
		b = events.AppendTime(append(b, `,"hold_expires_at":`...), time.UnixMilli(d.HoldExpiresAtMs))
	}
	b = events.AppendKeyInt(b, `,"remaining":{"available_micros":`, d.AvailableMicros)
	b = append(b, `,"allowance":[`...)
	for i := 0; i < d.NumWindows; i++ {
		w := &d.Windows[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = events.AppendKeyString(b, `{"name":`, w.Name)
		b = events.AppendKeyInt(b, `,"limit_micros":`, w.LimitMicros)
		b = events.AppendKeyInt(b, `,"used_micros":`, w.UsedMicros)
		b = events.AppendKeyInt(b, `,"remaining_micros":`, w.RemainingMicros)
		b = events.AppendTime(append(b, `,"resets_at":`...), time.UnixMilli(w.ResetsAtMs))
		b = append(b, '}')
	}
	b = events.AppendKeyInt(b, `],"rate_per_minute":`, d.RatePerMinute)
	b = events.AppendKeyInt(b, `,"burst":`, d.Burst)
	b = events.AppendKeyInt(b, `,"rate_remaining":`, d.RateRemaining)
	b = events.AppendKeyInt(b, `,"concurrency_limit":`, d.ConcurrencyLimit)
	b = events.AppendKeyInt(b, `,"in_flight":`, d.InFlight)
	b = events.AppendKeyInt(b, `,"endpoint_in_flight":`, d.EndpointInFlight)
	b = events.AppendKeyInt(b, `,"endpoint_capacity":`, d.EndpointCapacity)
	b = events.AppendKeyInt(b, `,"load_factor_permille":`, d.LoadFactorPermille)
	b = events.AppendKeyInt(b, `,"history_factor_permille":`, d.HistoryFactorPermille)
	b = events.AppendKeyString(b, `},"price_book_version":`, s.book.Version)
	return append(b, '}')
}
