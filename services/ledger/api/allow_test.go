package api_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
