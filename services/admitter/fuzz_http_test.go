package admitter

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tallyhq/tally/shared/httpx"
)

// FuzzHandlers throws arbitrary bodies at /v1/admit and /v1/finish (on a service that is not
// ready, so no Kafka is needed) and checks that every answer is a JSON 4xx or the 503 of
// "not ready" — never a 500, never a panic.
func FuzzHandlers(f *testing.F) {
	for _, seed := range []string{`{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":5}}`,
		`{"request_id":"r","status":"succeeded","usage":{"video_seconds":1e3}}`, `{"estimate":{"tokens_in":-1}}`,
		`[]`, `{"account_id":"` + strings.Repeat("é", 100) + `"}`, "\x00", `{"priority":null}`} {
		f.Add(seed, true)
		f.Add(seed, false)
	}
	cfg := DefaultConfig()
	cfg.APIKeys = "k1:" + httpx.HashSecret(testSecret)
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.BodyBytesMax = 512
	s, err := New(cfg, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.ln.Close() })
	h := s.Handler()
	f.Fuzz(func(t *testing.T, body string, admit bool) {
		path := "/v1/finish"
		if admit {
			path = "/v1/admit"
		}
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testSecret)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != 503 || rec.Code < 400 {
			t.Fatalf("%s %q: %d %s", path, body, rec.Code, rec.Body)
		}
		if rec.Header().Get("Content-Type") != "application/json" || !strings.HasPrefix(rec.Body.String(), `{"error":{"code":"`) {
			t.Fatalf("not a JSON error: %q", rec.Body)
		}
	})
}
