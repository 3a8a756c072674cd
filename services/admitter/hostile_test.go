package admitter

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/tallyhq/tally/shared/httpx/httpxtest"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// recordingPublisher stands in for Kafka in the handler fuzz target and table tests only: the
// property under test is input handling. It records what would be published.
type recordingPublisher struct {
	mu   sync.Mutex
	next int64
	vals [][]byte
}

func (p *recordingPublisher) Publish(_ context.Context, _ string, value []byte) (int32, int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	p.vals = append(p.vals, append([]byte(nil), value...))
	return 0, p.next, nil
}

func (p *recordingPublisher) take() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vals
	p.vals = nil
	return v
}

const hostileBodyBytesMax = 1024

// readyHandler is a service past its loading phase (never Run: no Kafka), publishing into a
// recordingPublisher, so that every admit reaches the decision core and every finish the
// settlement.
func readyHandler(tb testing.TB) (*Service, http.Handler, *recordingPublisher) {
	tb.Helper()
	pub := &recordingPublisher{}
	s, h := readyService(tb, pub, func(c *Config) {
		c.BodyBytesMax = hostileBodyBytesMax
		c.IdempotencyMax = 1000
	})
	return s, h, pub
}

// readyService is a service past its loading phase (never Run: no Kafka) with the test key
// and price book, publishing through pub; edit adjusts the settings first.
func readyService(tb testing.TB, pub Publisher, edit func(*Config)) (*Service, http.Handler) {
	tb.Helper()
	cfg := DefaultConfig()
	cfg.APIKeys = "k1:" + httpx.HashSecret(testSecret)
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.PriceBookPath = testBook(tb)
	cfg.FollowPeers = false // no follower runs: a finish of an unknown request is 404 at once
	edit(&cfg)
	s, err := New(cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.ln.Close() })
	s.pub = pub
	s.ready.Store(true)
	return s, s.Handler()
}

var knownCodes = map[string]bool{httpx.CodeBadRequest: true, httpx.CodeInvalidJSON: true, httpx.CodeValidation: true,
	httpx.CodeBodyTooLarge: true, httpx.CodeUnsupportedMedia: true, httpx.CodeUnauthenticated: true, httpx.CodeForbidden: true,
	httpx.CodeNotFound: true, httpx.CodeMethodNotAllowed: true, httpx.CodeConflict: true,
	api.CodeUnknownRequest: true, api.CodeRequestIDReused: true}

// checkHostile enforces what every answer must satisfy: no 5xx (the publisher never fails
// here); 200 (and an admit's 429) are JSON answers; anything else is a 4xx in the documented
// error shape with a known code; every event published decodes, so no consumer would have to
// dead-letter it.
func checkHostile(t *testing.T, path string, rec *httptest.ResponseRecorder, pub *recordingPublisher) {
	t.Helper()
	for _, v := range pub.take() {
		if _, err := events.Decode(v); err != nil {
			t.Fatalf("%s published an undecodable event %q: %v", path, v, err)
		}
	}
	if rec.Header().Get("Content-Type") != "application/json" || !json.Valid(rec.Body.Bytes()) {
		t.Fatalf("%s: %d not JSON: %q", path, rec.Code, rec.Body)
	}
	if rec.Code == 200 || rec.Code == 429 && path == "/v1/admit" && strings.Contains(rec.Body.String(), `"allowed":false`) {
		return
	}
	if rec.Code < 400 || rec.Code >= 500 {
		t.Fatalf("%s: status %d: %q", path, rec.Code, rec.Body)
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
		t.Fatalf("%s: %d is not the documented error shape: %q (%v)", path, rec.Code, rec.Body, err)
	}
}

func hostilePost(h http.Handler, path, contentType, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testSecret)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// FuzzAdmitFinish throws an arbitrary admit and then an arbitrary finish at a ready admitter,
// so that hostile input reaches the decision core, the pricing and the settlement (FuzzHandlers
// covers the not-ready service): no panic, no 5xx, every error the documented JSON shape,
// every published event decodable.
func FuzzAdmitFinish(f *testing.F) {
	admit := []string{
		`{"request_id":"r1","account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":5,"tokens_out":5}}`,
		`{"request_id":"r1","account_id":"a","endpoint":"sora.video","estimate":{"video_seconds":10,"resolution":"1080p"}}`,
		`{"request_id":"r1","account_id":"a","endpoint":"sora.video","estimate":{"video_seconds":10,"resolution":"8k"}}`,
		`{"request_id":"r1","account_id":"a","endpoint":"codex.responses","model":"nope","estimate":{"tokens_in":1}}`,
		`{"request_id":"r1","account_id":"a","endpoint":"codex.responses","priority":"critical","estimate":{"tokens_in":9223372036854775807}}`,
		`{"request_id":"r1","account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":-1}}`,
		`{"request_id":"r1","account_id":"ü","endpoint":"codex.responses","estimate":{}}`,
	}
	finish := []string{
		`{"request_id":"r1","status":"succeeded","usage":{"tokens_in":5,"tokens_out":7}}`,
		`{"request_id":"r1","status":"succeeded","usage":{"video_seconds":1e3,"resolution":"1080p"}}`,
		`{"request_id":"r1","status":"failed","usage":{"tokens_in":9223372036854775807,"tokens_out":9223372036854775807}}`,
		`{"request_id":"r1","status":"cancelled","usage":{},"duration_ms":-1}`,
		`{"request_id":"r2","status":"succeeded","usage":{"tokens_in":1}}`,
	}
	for i, a := range admit {
		f.Add(a, finish[i%len(finish)], "application/json")
	}
	f.Add(admit[0], finish[0], "text/plain")
	_, h, pub := readyHandler(f)
	f.Fuzz(func(t *testing.T, admitBody, finishBody, contentType string) {
		if strings.ContainsAny(contentType, "\r\n\x00") {
			return // not a header value net/http would deliver
		}
		checkHostile(t, "/v1/admit", hostilePost(h, "/v1/admit", contentType, admitBody), pub)
		checkHostile(t, "/v1/finish", hostilePost(h, "/v1/finish", contentType, finishBody), pub)
	})
}

// TestHostileAdmitFinish is the table of hostile inputs with the exact status and code each
// must get from a ready admitter.
func TestHostileAdmitFinish(t *testing.T) {
	_, h, pub := readyHandler(t)
	ok := func(rid, acct string) string {
		return `{"request_id":"` + rid + `","account_id":"` + acct + `","endpoint":"codex.responses","estimate":{"tokens_in":10}}`
	}
	deep := strings.Repeat(`{"a":`, 2000) + "1" + strings.Repeat("}", 2000)
	cases := []struct {
		name, path, contentType, body string
		status                        int
		code                          string
	}{
		{"valid admit", "/v1/admit", "application/json", ok("r-ok", "acct_1"), 200, ""},
		{"valid finish", "/v1/finish", "application/json", `{"request_id":"r-ok","status":"succeeded","usage":{"tokens_in":10}}`, 200, ""},
		{"oversized body", "/v1/admit", "application/json", `{"account_id":"` + strings.Repeat("a", hostileBodyBytesMax) + `"}`, 413, httpx.CodeBodyTooLarge},
		{"oversized finish", "/v1/finish", "application/json", strings.Repeat(" ", hostileBodyBytesMax+1) + "{}", 413, httpx.CodeBodyTooLarge},
		{"deep nesting", "/v1/admit", "application/json", deep, 413, httpx.CodeBodyTooLarge},
		{"deep nesting within the bound", "/v1/admit", "application/json", strings.Repeat("[", 500) + strings.Repeat("]", 500), 400, httpx.CodeInvalidJSON},
		{"nested object in the estimate", "/v1/admit", "application/json", `{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":{"x":[[[1]]]}}}`, 400, httpx.CodeInvalidJSON},
		{"huge number", "/v1/admit", "application/json", `{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":1e999}}`, 400, httpx.CodeInvalidJSON},
		{"int64 overflow", "/v1/admit", "application/json", `{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":9223372036854775808}}`, 400, httpx.CodeInvalidJSON},
		{"max int64 estimate", "/v1/admit", "application/json", `{"request_id":"r-max","account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":9223372036854775807}}`, 400, httpx.CodeValidation},
		{"max int64 usage", "/v1/finish", "application/json", `{"request_id":"r-ok","status":"succeeded","usage":{"tokens_in":9223372036854775807}}`, 400, httpx.CodeValidation},
		{"negative estimate", "/v1/admit", "application/json", `{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":-10}}`, 400, httpx.CodeValidation},
		{"negative usage", "/v1/finish", "application/json", `{"request_id":"r-ok","status":"succeeded","usage":{"tokens_out":-1}}`, 400, httpx.CodeValidation},
		{"negative duration", "/v1/finish", "application/json", `{"request_id":"r-ok","status":"succeeded","usage":{},"duration_ms":-5}`, 400, httpx.CodeValidation},
		{"NaN as a string", "/v1/admit", "application/json", `{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":"NaN"}}`, 400, httpx.CodeInvalidJSON},
		{"NaN bare", "/v1/finish", "application/json", `{"request_id":"r-ok","status":"succeeded","usage":{"video_seconds":NaN}}`, 400, httpx.CodeInvalidJSON},
		{"fraction", "/v1/admit", "application/json", `{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":1.5}}`, 400, httpx.CodeInvalidJSON},
		// Ids are valid UTF-8 without spaces or controls (events.CheckID): unicode is accepted.
		{"unicode account id", "/v1/admit", "application/json", ok("r-uni", "acct_ü_日本"), 200, ""},
		{"emoji request id", "/v1/admit", "application/json", ok("r-\U0001F600", "acct_1"), 200, ""},
		{"space in account id", "/v1/admit", "application/json", ok("r-sp", "acct 1"), 400, httpx.CodeValidation},
		{"control char in request id", "/v1/admit", "application/json", ok(`r\u0000x`, "acct_1"), 400, httpx.CodeValidation},
		{"invalid UTF-8 (decoded as U+FFFD)", "/v1/admit", "application/json", ok("r-\xff", "acct_2"), 400, httpx.CodeValidation},
		{"lone surrogate (decoded as U+FFFD)", "/v1/admit", "application/json", ok(`r-\ud800`, "acct_2"), 400, httpx.CodeValidation},
		{"tag character", "/v1/admit", "application/json", ok("r-tag", "acct\U000E0041"), 400, httpx.CodeValidation},
		{"variation selector", "/v1/admit", "application/json", ok("r-vs", "acct\ufe0f"), 400, httpx.CodeValidation},
		{"Hangul filler", "/v1/admit", "application/json", ok("r-hf", "acct\u3164"), 400, httpx.CodeValidation},
		{"account id .", "/v1/admit", "application/json", ok("r-dot", "."), 400, httpx.CodeValidation},
		{"account id ..", "/v1/admit", "application/json", ok("r-dotdot", ".."), 400, httpx.CodeValidation},
		{"id over the bound", "/v1/admit", "application/json", ok("r", strings.Repeat("a", events.MaxIDChars+1)), 400, httpx.CodeValidation},
		{"id over the bound in characters", "/v1/admit", "application/json", ok("r", strings.Repeat("é", events.MaxIDChars+1)), 400, httpx.CodeValidation},
		{"128 two-byte characters", "/v1/admit", "application/json", ok("r-128", strings.Repeat("é", events.MaxIDChars)), 200, ""},
		{"text/plain", "/v1/admit", "text/plain", ok("r-tp", "acct_1"), 415, httpx.CodeUnsupportedMedia},
		{"form", "/v1/finish", "application/x-www-form-urlencoded", "request_id=r-ok", 415, httpx.CodeUnsupportedMedia},
		{"broken media type", "/v1/admit", "application/json;;;", ok("r-bm", "acct_1"), 415, httpx.CodeUnsupportedMedia},
		{"json with charset", "/v1/admit", "application/json; charset=utf-8", ok("r-cs", "acct_3"), 200, ""},
		{"unknown field", "/v1/admit", "application/json", `{"account_id":"a","endpoint":"codex.responses","estimate":{},"cost_micros":0}`, 400, httpx.CodeInvalidJSON},
		{"trailing data", "/v1/finish", "application/json", `{"request_id":"r-ok","status":"succeeded","usage":{}} []`, 400, httpx.CodeInvalidJSON},
		{"empty", "/v1/admit", "application/json", "", 400, httpx.CodeInvalidJSON},
		{"unknown endpoint", "/v1/admit", "application/json", `{"account_id":"a","endpoint":"nope","estimate":{"tokens_in":1}}`, 404, httpx.CodeNotFound},
		{"unknown request", "/v1/finish", "application/json", `{"request_id":"r-never","status":"succeeded","usage":{}}`, 404, api.CodeUnknownRequest},
		{"request id reused", "/v1/admit", "application/json", ok("r-ok", "acct_other"), 409, api.CodeRequestIDReused},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := hostilePost(h, c.path, c.contentType, c.body)
			checkHostile(t, c.path, rec, pub)
			var e struct{ Error struct{ Code string } }
			_ = json.Unmarshal(rec.Body.Bytes(), &e)
			if rec.Code != c.status || e.Error.Code != c.code {
				t.Fatalf("%d %q, want %d %q: %s", rec.Code, e.Error.Code, c.status, c.code, rec.Body)
			}
		})
	}
}

// TestSlowClientsCutOff runs the admitter with small ADMITTER_HTTP_* timeouts: a client that
// sends part of its headers and stalls, one that trickles header bytes, and one that sends
// headers and then stalls in the body are all cut off by the server, and a normal request
// on the same server is still answered.
func TestSlowClientsCutOff(t *testing.T) {
	c := kafkatest.Start(t)
	cfg := testConfig(t, c)
	cfg.HTTP.ReadHeaderTimeoutMs = 300
	cfg.HTTP.ReadTimeoutMs = 600
	cfg.HTTP.WriteTimeoutMs = 2000
	cfg.HTTP.IdleTimeoutMs = 1000
	s := start(t, cfg)
	httpxtest.SlowClients(t, s.Addr(), "/v1/admit", testSecret, `{"account_id":`)
	if a := post(t, s.url+"/v1/admit", testSecret, `{"account_id":"a","endpoint":"codex.responses","estimate":{"tokens_in":1}}`); a.status != 429 && a.status != 200 {
		t.Fatalf("normal request after the slow ones: %d %s", a.status, a.body)
	}
}
