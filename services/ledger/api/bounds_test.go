package api_test

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/pricebook"
)

// TestGrantAndAdjustmentBounds: every amount and time the API accepts is in range, and
// anything else is a 400 validation_failed that says why. An expires_at past 2262 used to be
// accepted and wrap around in the ledger (credits burned at once, a journal no consumer could
// read); one in the past was accepted too and made a statement close negative.
func TestGrantAndAdjustmentBounds(t *testing.T) {
	keys, err := httpx.ParseKeyring("ops:" + httpx.HashSecret(hostileToken))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	pub := &recordingPublisher{}
	h := api.Handler(api.Config{Admin: keys, Book: pricebook.Default(), BodyBytesMax: 4096, PageMax: 100,
		PublishTimeout: time.Second, Now: func() time.Time { return now }}, nopReader{}, pub)
	grant := func(amount int64, exp string) string {
		if exp == "" {
			return fmt.Sprintf(`{"amount_micros":%d}`, amount)
		}
		return fmt.Sprintf(`{"amount_micros":%d,"expires_at":%q}`, amount, exp)
	}
	adjust := func(amount int64) string { return fmt.Sprintf(`{"amount_micros":%d,"reason":"r"}`, amount) }
	max := events.MaxAmountMicros
	for _, c := range []struct {
		name, path, body string
		status           int
		msg              string // part of the message of a 400
	}{
		{"grant at the amount bound", "grants", grant(max, ""), 202, ""},
		{"grant above the amount bound", "grants", grant(max+1, ""), 400, "amount_micros"},
		{"adjustment credit at the bound", "adjustments", adjust(max), 202, ""},
		{"adjustment debit at the bound", "adjustments", adjust(-max), 202, ""},
		{"adjustment credit above the bound", "adjustments", adjust(max + 1), 400, "amount_micros"},
		{"adjustment debit above the bound", "adjustments", adjust(-max - 1), 400, "amount_micros"},
		{"expires in a second", "grants", grant(5, now.Add(time.Second).Format(time.RFC3339Nano)), 202, ""},
		{"expires just before the time bound", "grants", grant(5, "2199-12-31T23:59:59.999999999Z"), 202, ""},
		{"expires now", "grants", grant(5, now.Format(time.RFC3339Nano)), 400, "not after the ledger's clock"},
		{"expired yesterday", "grants", grant(5, now.Add(-24*time.Hour).Format(time.RFC3339)), 400, "not after the ledger's clock"},
		{"expires in 1969", "grants", grant(5, "1969-07-20T20:17:00Z"), 400, "expires_at"},
		{"expires at the time bound", "grants", grant(5, "2200-01-01T00:00:00Z"), 400, "2200-01-01"},
		{"expires after int64 nanoseconds end", "grants", grant(5, "2300-01-01T00:00:00Z"), 400, "2200-01-01"},
		{"expires in 9999", "grants", grant(5, "9999-12-31T23:59:59Z"), 400, "2200-01-01"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, hostileRequest(c.path, "acct_1", "application/json", c.body))
			published := pub.take()
			var e struct{ Error httpx.Error }
			_ = json.Unmarshal(rec.Body.Bytes(), &e)
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, c.status, rec.Body)
			}
			if c.status == 202 {
				if len(published) != 1 {
					t.Fatalf("published %d events", len(published))
				}
				return
			}
			if e.Error.Code != httpx.CodeValidation || !strings.Contains(e.Error.Message, c.msg) || len(published) != 0 {
				t.Fatalf("code %q message %q (want %q), published %d", e.Error.Code, e.Error.Message, c.msg, len(published))
			}
		})
	}
}
