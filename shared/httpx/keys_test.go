package httpx_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/httpx"
)

var hashSecret = []byte("0123456789abcdef0123456789abcdef-server-secret")

func authReq(token, addr string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	r.RemoteAddr = addr + ":5555"
	return r
}

// TestKeyringHMAC: keys configured as HMAC-SHA256 under the server secret authenticate by
// one lookup; the same entry under another secret, a wrong token and the plain SHA-256 of
// the token do not; legacy SHA-256 entries still work.
func TestKeyringHMAC(t *testing.T) {
	spec := "edge1:hmac:" + httpx.HMACKey(hashSecret, "tk_one") + ",edge2:hmac:" + httpx.HMACKey(hashSecret, "tk_two") +
		",old:" + httpx.HashSecret("tk_legacy")
	k, err := httpx.ParseKeyringWith(spec, httpx.KeyringOptions{HashSecret: hashSecret, TokenPrefix: "tk_"})
	if err != nil {
		t.Fatal(err)
	}
	if k.Len() != 3 || k.Legacy() != 1 {
		t.Fatalf("Len %d Legacy %d", k.Len(), k.Legacy())
	}
	for token, want := range map[string]string{"tk_one": "edge1", "tk_two": "edge2", "tk_legacy": "old"} {
		if id, herr := k.Authenticate(authReq(token, "10.0.0.1")); herr != nil || id != want {
			t.Errorf("%s: %q %v, want %s", token, id, herr, want)
		}
	}
	other, err := httpx.ParseKeyringWith(spec, httpx.KeyringOptions{HashSecret: []byte("another-secret-another-secret-32b!")})
	if err != nil {
		t.Fatal(err)
	}
	if id, herr := other.Authenticate(authReq("tk_one", "10.0.0.1")); herr == nil {
		t.Errorf("an entry made with another secret authenticated as %q", id)
	}
	for _, token := range []string{"tk_three", "tk_on", httpx.HMACKey(hashSecret, "tk_one"), "ta_one"} {
		if _, herr := k.Authenticate(authReq(token, "10.0.0.2")); herr == nil || herr.Code != httpx.CodeForbidden {
			t.Errorf("%q: %v, want forbidden", token, herr)
		}
	}
	if _, err := httpx.ParseKeyringWith("a:hmac:"+httpx.HMACKey(hashSecret, "x"), httpx.KeyringOptions{}); err == nil {
		t.Error("an hmac entry without the secret was accepted")
	}
	if _, err := httpx.ParseKeyringWith("a:hmac:"+httpx.HMACKey(hashSecret, "x"), httpx.KeyringOptions{HashSecret: []byte("short")}); err == nil {
		t.Error("a short secret was accepted")
	}
}

// TestKeyringRolePrefix: a token made for one role (ta_ admin) is refused by a keyring of the
// other (tk_ edge) even when an operator configured its hash there too.
func TestKeyringRolePrefix(t *testing.T) {
	spec := "mixup:hmac:" + httpx.HMACKey(hashSecret, "ta_admin-secret")
	edge, _ := httpx.ParseKeyringWith(spec, httpx.KeyringOptions{HashSecret: hashSecret, TokenPrefix: "tk_"})
	admin, _ := httpx.ParseKeyringWith(spec, httpx.KeyringOptions{HashSecret: hashSecret, TokenPrefix: "ta_"})
	if _, herr := edge.Authenticate(authReq("ta_admin-secret", "10.0.0.3")); herr == nil || herr.Code != httpx.CodeForbidden {
		t.Errorf("an admin token accepted as an edge key: %v", herr)
	}
	if id, herr := admin.Authenticate(authReq("ta_admin-secret", "10.0.0.3")); herr != nil || id != "mixup" {
		t.Errorf("admin keyring: %q %v", id, herr)
	}
}

// TestAuthThrottle: after failuresMax wrong keys an address gets 429 with Retry-After, even
// with the right key, until its window ends; other addresses are not affected; the table
// never holds more than clientsMax addresses.
func TestAuthThrottle(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	th, err := httpx.NewAuthThrottle(5, time.Minute, 100, clock)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := httpx.ParseKeyringWith("e:hmac:"+httpx.HMACKey(hashSecret, "tk_good"), httpx.KeyringOptions{HashSecret: hashSecret, TokenPrefix: "tk_", Throttle: th})
	for i := range 5 {
		if _, herr := k.Authenticate(authReq("tk_bad"+strconv.Itoa(i), "192.0.2.1")); herr == nil || herr.Code != httpx.CodeForbidden {
			t.Fatalf("attempt %d: %v, want forbidden", i, herr)
		}
	}
	_, herr := k.Authenticate(authReq("tk_good", "192.0.2.1"))
	if herr == nil || herr.Status != http.StatusTooManyRequests || herr.RetryAfterSeconds != 60 {
		t.Fatalf("6th attempt: %+v, want 429 with Retry-After 60", herr)
	}
	rec := httptest.NewRecorder()
	httpx.WriteError(rec, herr)
	if rec.Code != 429 || rec.Header().Get("Retry-After") != "60" {
		t.Fatalf("written: %d Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	if id, herr := k.Authenticate(authReq("tk_good", "192.0.2.2")); herr != nil || id != "e" {
		t.Fatalf("another address: %q %v", id, herr)
	}
	now = now.Add(time.Minute)
	if id, herr := k.Authenticate(authReq("tk_good", "192.0.2.1")); herr != nil || id != "e" {
		t.Fatalf("after the window: %q %v", id, herr)
	}
	// Bounded memory: many addresses failing never grow the table past clientsMax.
	for i := range 10_000 {
		_, _ = k.Authenticate(authReq("tk_bad", "198.51."+strconv.Itoa(i/256)+"."+strconv.Itoa(i%256)))
	}
	if n := th.Tracked(); n > 100 {
		t.Fatalf("%d addresses tracked, bound 100", n)
	}
}
