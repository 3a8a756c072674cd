package api_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/pricebook"
)

// TestMethodNotAllowedHasAllow: a 405 names the methods the path takes (RFC 9110 15.5.6).
func TestMethodNotAllowedHasAllow(t *testing.T) {
	h, _ := hostileHandler(t)
	for path, want := range map[string]string{
		"/v1/accounts/acct_1":             "GET, HEAD, PUT",
		"/v1/accounts/acct_1/grants":      "POST",
		"/v1/accounts/acct_1/adjustments": "POST",
		"/v1/accounts/acct_1/entries":     "GET, HEAD",
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodDelete, path, nil)
		req.Header.Set("Authorization", "Bearer "+hostileToken)
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != want {
			t.Errorf("DELETE %s: %d Allow %q, want 405 Allow %q", path, rec.Code, rec.Header().Get("Allow"), want)
		}
	}
}

// TestEmptyTierRefused: PUT with an empty tier is validation_failed, as the schema says.
func TestEmptyTierRefused(t *testing.T) {
	h, pub := hostileHandler(t)
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPut, "/v1/accounts/acct_1", strings.NewReader(`{"tier":"","priority":"standard"}`))
	req.Header.Set("Authorization", "Bearer "+hostileToken)
	req.Header.Set("Content-Type", "application/json")
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "validation_failed") {
		t.Fatalf("empty tier: %d %s", rec.Code, rec.Body)
	}
	checkAnswer(t, rec, pub, "acct_1", "")
}

// TestAdminKeyIDInEvents: the id of the admin key that made a grant, an adjustment or an
// account change is in the event it publishes, for finance's audit trail; two keys are told
// apart, and a key made for edge use (tk_) is refused although its hash is configured.
func TestAdminKeyIDInEvents(t *testing.T) {
	secret := []byte("ledger-key-hash-secret-0123456789abcdef")
	spec := "finance-alice:hmac:" + httpx.HMACKey(secret, "ta_alice") + ",finance-bob:hmac:" + httpx.HMACKey(secret, "ta_bob") +
		",edge:hmac:" + httpx.HMACKey(secret, "tk_edge")
	keys, err := httpx.ParseKeyringWith(spec, httpx.KeyringOptions{HashSecret: secret, TokenPrefix: "ta_"})
	if err != nil {
		t.Fatal(err)
	}
	pub := &recordingPublisher{}
	h := api.Handler(api.Config{Admin: keys, Book: pricebook.Default(), BodyBytesMax: hostileBodyBytesMax, PageMax: 100,
		PublishTimeout: time.Second}, nopReader{}, pub)
	do := func(method, path, token, body string) int {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	if c := do("POST", "/v1/accounts/acct_1/grants", "ta_alice", `{"amount_micros":5}`); c != 202 {
		t.Fatalf("grant: %d", c)
	}
	if c := do("POST", "/v1/accounts/acct_1/adjustments", "ta_bob", `{"amount_micros":-5,"reason":"refund"}`); c != 202 {
		t.Fatalf("adjustment: %d", c)
	}
	if c := do("PUT", "/v1/accounts/acct_1", "ta_alice", `{"tier":"pro","priority":"standard"}`); c != 202 {
		t.Fatalf("account: %d", c)
	}
	if c := do("POST", "/v1/accounts/acct_1/grants", "tk_edge", `{"amount_micros":5}`); c != http.StatusForbidden {
		t.Fatalf("an edge key on the ledger: %d, want 403", c)
	}
	evs := pub.take()
	if len(evs) != 3 {
		t.Fatalf("%d events, want 3", len(evs))
	}
	want := []string{"finance-alice", "finance-bob", "finance-alice"}
	for i, ev := range evs {
		dec, err := events.Decode(mustEncode(t, ev))
		if err != nil {
			t.Fatal(err)
		}
		d := dec.Payload
		var got string
		switch x := d.(type) {
		case events.CreditsGranted:
			got = x.AdminKeyID
		case events.CreditsAdjusted:
			got = x.AdminKeyID
		case events.AccountUpdated:
			got = x.AdminKeyID
		default:
			t.Fatalf("event %d: %T", i, d)
		}
		if got != want[i] {
			t.Errorf("event %d (%s): admin_key_id %q, want %q", i, ev.Type, got, want[i])
		}
	}
}

func mustEncode(t *testing.T, ev events.Event) []byte {
	t.Helper()
	b, err := ev.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
