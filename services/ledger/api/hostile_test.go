package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/pricebook"
)

const hostileToken = "admin-fuzz-token"

// recordingPublisher implements api.Publisher for the handler fuzz targets and table tests:
// the property under test is the handler's input handling, so it only records what would
// have been published (integration tests publish to real Kafka).
type recordingPublisher struct {
	mu  sync.Mutex
	evs []events.Event
}

func (p *recordingPublisher) Publish(_ context.Context, ev events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.evs = append(p.evs, ev)
	return nil
}

func (p *recordingPublisher) take() []events.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	evs := p.evs
	p.evs = nil
	return evs
}

const hostileBodyBytesMax = 4096

func hostileHandler(tb testing.TB) (http.Handler, *recordingPublisher) {
	tb.Helper()
	keys, err := httpx.ParseKeyring("ops:" + httpx.HashSecret(hostileToken))
	if err != nil {
		tb.Fatal(err)
	}
	pub := &recordingPublisher{}
	h := api.Handler(api.Config{Admin: keys, Book: pricebook.Default(), BodyBytesMax: hostileBodyBytesMax, PageMax: 100,
		PublishTimeout: time.Second}, nopReader{}, pub)
	return h, pub
}

// knownCodes are the documented error codes (httpx).
var knownCodes = map[string]bool{httpx.CodeBadRequest: true, httpx.CodeInvalidJSON: true, httpx.CodeValidation: true,
	httpx.CodeBodyTooLarge: true, httpx.CodeUnsupportedMedia: true, httpx.CodeUnauthenticated: true, httpx.CodeForbidden: true,
	httpx.CodeNotFound: true, httpx.CodeMethodNotAllowed: true, httpx.CodeConflict: true, httpx.CodeUnavailable: true}

// checkAnswer enforces the properties every answer must have: no 5xx (the publisher never
// fails here), a 202 carries an event id and published exactly one valid event for the
// path's account, anything else is a 4xx in the documented JSON error shape and published
// nothing.
func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder, pub *recordingPublisher, account, wantType string) {
	t.Helper()
	evs := pub.take()
	if rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d with content type %q: %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	if rec.Code == http.StatusAccepted {
		var acc api.Accepted
		if err := json.Unmarshal(rec.Body.Bytes(), &acc); err != nil || acc.EventID == "" {
			t.Fatalf("202 without an event id: %q", rec.Body)
		}
		if len(evs) != 1 || evs[0].ID != acc.EventID || evs[0].Type != wantType || evs[0].Subject != account {
			t.Fatalf("202 published %+v, want one %s for %q", evs, wantType, account)
		}
		raw, err := evs[0].Encode()
		if err != nil {
			t.Fatalf("published event does not encode: %v", err)
		}
		if _, err := events.Decode(raw); err != nil {
			t.Fatalf("published event does not decode (a consumer would dead-letter it): %v", err)
		}
		return
	}
	if rec.Code < 400 || rec.Code >= 500 {
		t.Fatalf("status %d: %q", rec.Code, rec.Body)
	}
	if len(evs) != 0 {
		t.Fatalf("%d answer but %d events published", rec.Code, len(evs))
	}
	var e struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	dec := json.NewDecoder(strings.NewReader(rec.Body.String()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || e.Error == nil || !knownCodes[e.Error.Code] || e.Error.Message == "" {
		t.Fatalf("%d is not the documented error shape: %q (%v)", rec.Code, rec.Body, err)
	}
}

func hostileRequest(path, account, contentType, body string) *http.Request {
	req := httptest.NewRequest(http.MethodPost, "/v1/accounts/"+url.PathEscape(account)+"/"+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+hostileToken)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return req
}

func fuzzWrite(f *testing.F, path, wantType string, seeds []string) {
	for _, s := range seeds {
		f.Add("acct_1", "application/json", s)
	}
	f.Add("acct é", "application/json", seeds[0])
	f.Add(strings.Repeat("a", 300), "application/json", seeds[0])
	f.Add("acct_1", "text/plain", seeds[0])
	f.Add("acct_1", "application/json; charset=utf-8", seeds[0])
	f.Add("acct_1", "", seeds[0])
	f.Add("acct_1", "application/json", strings.Repeat("[", 10_000))
	f.Add("acct_1", "application/json", `{"amount_micros":"NaN"}`)
	f.Add("acct_1", "application/json", `{"amount_micros":1e400}`)
	h, pub := hostileHandler(f)
	f.Fuzz(func(t *testing.T, account, contentType, body string) {
		if strings.ContainsAny(contentType, "\r\n\x00") {
			return // not a header value net/http would deliver
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, hostileRequest(path, account, contentType, body))
		checkAnswer(t, rec, pub, account, wantType)
	})
}

// FuzzGrantHandler throws arbitrary account ids, content types and bodies at
// POST /v1/accounts/{id}/grants: no panic, no 5xx, every error the documented JSON shape,
// and a 202 only with one valid credits.granted published.
func FuzzGrantHandler(f *testing.F) {
	fuzzWrite(f, "grants", events.TypeCreditsGranted, []string{
		`{"grant_id":"g1","amount_micros":5000000,"source":"purchase"}`,
		`{"grant_id":"g2","amount_micros":1,"source":"promotion","priority":3,"expires_at":"2030-01-01T00:00:00Z"}`,
		`{"amount_micros":-5}`, `{"amount_micros":9223372036854775807}`, `{"amount_micros":9223372036854775808}`,
		`{"grant_id":"g\u00e9","amount_micros":5}`, `{"expires_at":"0001-01-01T00:00:00Z","amount_micros":5}`,
		`{"priority":-1,"amount_micros":5}`, `{"unknown":1}`, `null`, `[]`, `{}`, `{"amount_micros":5}{}`,
	})
}

// FuzzPurchaseHandler is FuzzGrantHandler for POST /v1/accounts/{id}/purchases.
func FuzzPurchaseHandler(f *testing.F) {
	fuzzWrite(f, "purchases", events.TypeCreditsGranted, []string{
		`{"purchase_id":"o1","payment_ref":"pi_1","amount_micros":5000000}`,
		`{"purchase_id":"o2","payment_ref":"pi_2","amount_micros":1,"expires_at":"2030-01-01T00:00:00Z"}`,
		`{"purchase_id":"` + strings.Repeat("p", 120) + `","payment_ref":"pi","amount_micros":1}`,
		`{"purchase_id":"oé","payment_ref":"pi é","amount_micros":1}`, `{"purchase_id":"o","amount_micros":1}`,
		`{"purchase_id":"o","payment_ref":"pi","amount_micros":1,"priority":0}`, `{}`,
	})
}

// FuzzAdjustmentHandler is FuzzGrantHandler for POST /v1/accounts/{id}/adjustments.
func FuzzAdjustmentHandler(f *testing.F) {
	fuzzWrite(f, "adjustments", events.TypeCreditsAdjusted, []string{
		`{"adjustment_id":"a1","amount_micros":-2500,"reason":"refund"}`,
		`{"adjustment_id":"a2","amount_micros":2500,"reason":"` + strings.Repeat("x", 1025) + `"}`,
		`{"amount_micros":0,"reason":"zero"}`, `{"amount_micros":-9223372036854775808,"reason":"min"}`,
		`{"amount_micros":1.5,"reason":"fraction"}`, `{"reason":"\ud800"}`, `{"amount_micros":"12","reason":"string"}`,
	})
}

// TestHostileWrites is the table of hostile inputs to the grant and adjustment handlers, with
// the exact status and code each must get.
func TestHostileWrites(t *testing.T) {
	h, pub := hostileHandler(t)
	deep := strings.Repeat(`{"a":`, 5000) + "1" + strings.Repeat("}", 5000)
	cases := []struct {
		name, path, account, contentType, body string
		status                                 int
		code                                   string
	}{
		{"valid grant", "grants", "acct_1", "application/json", `{"grant_id":"g1","amount_micros":5000000}`, 202, ""},
		{"valid adjustment", "adjustments", "acct_1", "application/json", `{"amount_micros":-5,"reason":"refund"}`, 202, ""},
		{"oversized body", "grants", "acct_1", "application/json", `{"grant_id":"` + strings.Repeat("g", hostileBodyBytesMax) + `"}`, 413, httpx.CodeBodyTooLarge},
		{"deep nesting", "grants", "acct_1", "application/json", deep, 413, httpx.CodeBodyTooLarge},
		{"deep nesting within the bound", "grants", "acct_1", "application/json", strings.Repeat("[", 1000) + strings.Repeat("]", 1000), 400, httpx.CodeInvalidJSON},
		{"nested object in a field", "grants", "acct_1", "application/json", `{"grant_id":{"a":{"b":[1,[2,[3]]]}},"amount_micros":5}`, 400, httpx.CodeInvalidJSON},
		{"huge number", "grants", "acct_1", "application/json", `{"amount_micros":99999999999999999999999999}`, 400, httpx.CodeInvalidJSON},
		{"int64 overflow by one", "grants", "acct_1", "application/json", `{"amount_micros":9223372036854775808}`, 400, httpx.CodeInvalidJSON},
		{"max int64 above the bound", "grants", "acct_1", "application/json", `{"amount_micros":9223372036854775807}`, 400, httpx.CodeValidation},
		{"exponent", "grants", "acct_1", "application/json", `{"amount_micros":1e3}`, 400, httpx.CodeInvalidJSON},
		{"negative grant", "grants", "acct_1", "application/json", `{"amount_micros":-5000000}`, 400, httpx.CodeValidation},
		{"zero grant", "grants", "acct_1", "application/json", `{"amount_micros":0}`, 400, httpx.CodeValidation},
		{"zero adjustment", "adjustments", "acct_1", "application/json", `{"amount_micros":0,"reason":"x"}`, 400, httpx.CodeValidation},
		{"NaN as a string", "grants", "acct_1", "application/json", `{"amount_micros":"NaN"}`, 400, httpx.CodeInvalidJSON},
		{"NaN bare", "adjustments", "acct_1", "application/json", `{"amount_micros":NaN,"reason":"x"}`, 400, httpx.CodeInvalidJSON},
		{"Infinity", "adjustments", "acct_1", "application/json", `{"amount_micros":Infinity,"reason":"x"}`, 400, httpx.CodeInvalidJSON},
		// Ids are any valid UTF-8 without spaces or control characters (events.CheckID): a
		// unicode id is accepted and published exactly as sent (checkAnswer compares it).
		{"unicode account id", "grants", "acct_é", "application/json", `{"amount_micros":5}`, 202, ""},
		{"emoji account id", "grants", "acct_\U0001F600", "application/json", `{"amount_micros":5}`, 202, ""},
		{"unicode grant id", "grants", "acct_1", "application/json", `{"grant_id":"g_ü","amount_micros":5}`, 202, ""},
		{"space in account id", "grants", "acct 1", "application/json", `{"amount_micros":5}`, 400, httpx.CodeValidation},
		{"tab in account id", "grants", "acct\t1", "application/json", `{"amount_micros":5}`, 400, httpx.CodeValidation},
		{"no-break space in grant id", "grants", "acct_1", "application/json", `{"grant_id":"g\u00a01","amount_micros":5}`, 400, httpx.CodeValidation},
		{"control character in grant id", "grants", "acct_1", "application/json", `{"grant_id":"g\u00071","amount_micros":5}`, 400, httpx.CodeValidation},
		{"lone surrogate in grant id", "grants", "acct_1", "application/json", `{"grant_id":"g\ud800","amount_micros":5}`, 400, httpx.CodeValidation},
		{"tag character in grant id", "grants", "acct_1", "application/json", "{\"grant_id\":\"g\U000E0041\",\"amount_micros\":5}", 400, httpx.CodeValidation},
		{"variation selector in account id", "grants", "acct\ufe0f", "application/json", `{"amount_micros":5}`, 400, httpx.CodeValidation},
		{"Hangul filler in account id", "grants", "acct\u3164", "application/json", `{"amount_micros":5}`, 400, httpx.CodeValidation},
		{"account id starting with a dot", "grants", ".acct", "application/json", `{"amount_micros":5}`, 400, httpx.CodeValidation},
		{"empty reason", "adjustments", "acct_1", "application/json", `{"amount_micros":5,"reason":""}`, 400, httpx.CodeValidation},
		{"reason of 1024 two-byte characters", "adjustments", "acct_1", "application/json", `{"amount_micros":5,"reason":"` + strings.Repeat("é", 1024) + `"}`, 202, ""},
		{"invalid UTF-8 account id", "grants", "acct_\xff", "application/json", `{"amount_micros":5}`, 400, httpx.CodeValidation},
		{"account id over the bound", "grants", strings.Repeat("a", events.MaxIDChars+1), "application/json", `{"amount_micros":5}`, 400, httpx.CodeValidation},
		{"invalid UTF-8 reason", "adjustments", "acct_1", "application/json", "{\"amount_micros\":5,\"reason\":\"\xff\xfe\"}", 202, ""},
		{"unicode reason", "adjustments", "acct_1", "application/json", `{"amount_micros":5,"reason":"remboursé 退款"}`, 202, ""},
		{"text/plain", "grants", "acct_1", "text/plain", `{"amount_micros":5}`, 415, httpx.CodeUnsupportedMedia},
		{"form", "grants", "acct_1", "application/x-www-form-urlencoded", `amount_micros=5`, 415, httpx.CodeUnsupportedMedia},
		{"bad media type", "grants", "acct_1", "application/json;;", `{"amount_micros":5}`, 415, httpx.CodeUnsupportedMedia},
		{"json with charset", "grants", "acct_1", "application/json; charset=utf-8", `{"amount_micros":5}`, 202, ""},
		{"unknown field", "grants", "acct_1", "application/json", `{"amount_micros":5,"admin":true}`, 400, httpx.CodeInvalidJSON},
		{"wrong-case field", "grants", "acct_1", "application/json", `{"Amount_Micros":5}`, 400, httpx.CodeInvalidJSON},
		{"trailing data", "grants", "acct_1", "application/json", `{"amount_micros":5} {"amount_micros":5}`, 400, httpx.CodeInvalidJSON},
		{"empty body", "grants", "acct_1", "application/json", ``, 400, httpx.CodeInvalidJSON},
		{"null", "grants", "acct_1", "application/json", `null`, 400, httpx.CodeValidation},
		{"array", "grants", "acct_1", "application/json", `[1,2]`, 400, httpx.CodeInvalidJSON},
		{"NUL bytes", "grants", "acct_1", "application/json", "\x00\x00", 400, httpx.CodeInvalidJSON},
		{"valid purchase", "purchases", "acct_1", "application/json", `{"purchase_id":"o1","payment_ref":"pi_1","amount_micros":5}`, 202, ""},
		{"purchase without payment_ref", "purchases", "acct_1", "application/json", `{"purchase_id":"o1","amount_micros":5}`, 400, httpx.CodeValidation},
		{"purchase without purchase_id", "purchases", "acct_1", "application/json", `{"payment_ref":"pi_1","amount_micros":5}`, 400, httpx.CodeValidation},
		{"purchase id over the bound", "purchases", "acct_1", "application/json", `{"purchase_id":"` + strings.Repeat("é", 120) + `","payment_ref":"pi","amount_micros":5}`, 400, httpx.CodeValidation},
		{"purchase with a source", "purchases", "acct_1", "application/json", `{"purchase_id":"o1","payment_ref":"pi","amount_micros":5,"source":"promotion"}`, 400, httpx.CodeInvalidJSON},
		{"purchase amount above the bound", "purchases", "acct_1", "application/json", `{"purchase_id":"o1","payment_ref":"pi","amount_micros":1000000000000001}`, 400, httpx.CodeValidation},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, hostileRequest(c.path, c.account, c.contentType, c.body))
			want := events.TypeCreditsGranted
			if c.path == "adjustments" {
				want = events.TypeCreditsAdjusted
			}
			checkAnswer(t, rec, pub, c.account, want)
			var e struct{ Error struct{ Code string } }
			_ = json.Unmarshal(rec.Body.Bytes(), &e)
			if rec.Code != c.status || e.Error.Code != c.code {
				t.Fatalf("%d %q, want %d %q: %s", rec.Code, e.Error.Code, c.status, c.code, rec.Body)
			}
		})
	}
}
