package client_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/shared/events"
)

// flaky forwards to the real admitter but answers the first n calls with 503 (after the
// admitter has seen them when seen is true), recording each body's request_id.
func flaky(t *testing.T, n int32, seen bool) (*httptest.Server, *[]string) {
	target, _ := url.Parse(admitterURL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var calls atomic.Int32
	var ids []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		i := strings.Index(string(b), `"request_id":"`)
		if i >= 0 {
			rest := string(b)[i+14:]
			ids = append(ids, rest[:strings.IndexByte(rest, '"')])
		}
		r.Body = io.NopCloser(strings.NewReader(string(b)))
		if calls.Add(1) <= n {
			if seen { // the admitter answers, but the answer is lost
				rec := httptest.NewRecorder()
				proxy.ServeHTTP(rec, r)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(503)
			_, _ = w.Write([]byte(`{"error":{"code":"unavailable","message":"flaky"}}`))
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &ids
}

func TestRetriesKeepTheRequestID(t *testing.T) {
	srv, ids := flaky(t, 2, true)
	c, err := client.New(client.Config{BaseURL: srv.URL, APIKey: apiKey, RetryBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	adm, err := c.Admit(ctx, api.AdmitRequest{AccountID: "retry-acct", Endpoint: "codex.responses",
		Estimate: events.Units{TokensIn: 1000, TokensOut: 1000}})
	if err != nil || !adm.Allowed {
		t.Fatalf("%+v %v", adm, err)
	}
	if len(*ids) != 3 || (*ids)[0] != (*ids)[1] || (*ids)[1] != (*ids)[2] || (*ids)[0] != adm.RequestID {
		t.Fatalf("request ids across retries: %v, answer %s", *ids, adm.RequestID)
	}
	// The admitter decided once: the answer after two lost ones still shows a single hold.
	if adm.Remaining.AvailableMicros != 5_000_000-7_500 {
		t.Fatalf("admitted more than once: available %d", adm.Remaining.AvailableMicros)
	}
}

func TestBoundedRetriesAndTypedErrors(t *testing.T) {
	srv, ids := flaky(t, 100, false)
	c, _ := client.New(client.Config{BaseURL: srv.URL, APIKey: apiKey, AttemptsMax: 4, RetryBackoff: time.Millisecond})
	_, err := c.Admit(context.Background(), api.AdmitRequest{AccountID: "acme", Endpoint: "codex.responses"})
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Code != "unavailable" || len(*ids) != 4 {
		t.Fatalf("err %v after %d attempts", err, len(*ids))
	}
	// Deadline: a context that expires stops the retries.
	c2, _ := client.New(client.Config{BaseURL: srv.URL, APIKey: apiKey, AttemptsMax: 10, RetryBackoff: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if _, err := c2.Admit(ctx, api.AdmitRequest{AccountID: "acme", Endpoint: "codex.responses"}); !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > 900*time.Millisecond {
		t.Fatalf("deadline: %v after %s", err, time.Since(t0))
	}
	// Typed errors from the real admitter: 403, 404, denial reason.
	bad, _ := client.New(client.Config{BaseURL: admitterURL, APIKey: "wrong"})
	if _, err := bad.Admit(context.Background(), api.AdmitRequest{AccountID: "acme", Endpoint: "codex.responses"}); !errors.As(err, &ae) || ae.Status != 403 || ae.Code != "forbidden" {
		t.Fatalf("wrong key: %v", err)
	}
	good, _ := client.New(client.Config{BaseURL: admitterURL, APIKey: apiKey})
	if _, err := good.Finish(context.Background(), api.FinishRequest{RequestID: "nope", Status: "succeeded"}); !errors.As(err, &ae) || ae.Code != api.CodeUnknownRequest {
		t.Fatalf("unknown request: %v", err)
	}
	_, err = good.Admit(context.Background(), api.AdmitRequest{AccountID: "acme", Endpoint: "codex.responses",
		Estimate: events.Units{TokensOut: 1_000_000_000}})
	var denied *client.DeniedError
	if !errors.As(err, &denied) || denied.Reason != client.ReasonInsufficientCredits || denied.RetryAfter <= 0 {
		t.Fatalf("denial: %v", err)
	}
	if _, err := client.New(client.Config{BaseURL: "ftp://x"}); err == nil {
		t.Fatal("bad config accepted")
	}
}
