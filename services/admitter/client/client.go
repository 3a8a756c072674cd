// Package client is the Go client edge services use to call the admitter: Admit before an
// expensive model request, Finish after it. Calls honour the context's deadline and retry a
// bounded number of times on 503 and network errors, always with the same request_id, so a
// retry can never admit (or settle) a request twice.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/shared/backoff"
)

// Reason is a denial reason.
type Reason string

// The denial reasons, in the admitter's decision order.
const (
	ReasonSuspended           Reason = api.ReasonSuspended
	ReasonBlocked             Reason = api.ReasonBlocked
	ReasonOverloaded          Reason = api.ReasonOverloaded
	ReasonConcurrencyLimited  Reason = api.ReasonConcurrencyLimited
	ReasonRateLimited         Reason = api.ReasonRateLimited
	ReasonBudgetExhausted     Reason = api.ReasonBudgetExhausted
	ReasonInsufficientCredits Reason = api.ReasonInsufficientCredits
)

// DeniedError is returned by Admit when the admitter answered 429: the request must not
// start. Response holds the full explanation.
type DeniedError struct {
	Reason     Reason
	RetryAfter time.Duration
	Response   *api.AdmitResponse
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("admitter: denied: %s (retry after %s)", e.Reason, e.RetryAfter)
}

// APIError is any other error answer: Code is the admitter's stable code (validation_failed,
// not_found, unauthenticated, forbidden, unavailable, unknown_request, ...).
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("admitter: %d %s: %s", e.Status, e.Code, e.Message)
}

// Config configures a Client.
type Config struct {
	// BaseURL is the admitter's address, e.g. "http://127.0.0.1:8081".
	BaseURL string
	// APIKey is the bearer secret.
	APIKey string
	// HTTPClient defaults to a client with a 10 s timeout.
	HTTPClient *http.Client
	// AttemptsMax bounds the attempts per call (default 3, at most 10).
	AttemptsMax int
	// RetryBackoff is the first pause between attempts, doubled each time (default 50 ms).
	RetryBackoff time.Duration
	// ResponseBytesMax bounds a response body (default 64 KiB).
	ResponseBytesMax int64
}

// Validate reports every problem, joined.
func (c Config) Validate() error {
	var errs []error
	if !strings.HasPrefix(c.BaseURL, "http://") && !strings.HasPrefix(c.BaseURL, "https://") {
		errs = append(errs, fmt.Errorf("BaseURL: want http(s)://host:port, got %q", c.BaseURL))
	}
	if c.APIKey == "" {
		errs = append(errs, errors.New("APIKey: required"))
	}
	if c.AttemptsMax < 0 || c.AttemptsMax > 10 {
		errs = append(errs, fmt.Errorf("AttemptsMax: %d out of range [0, 10]", c.AttemptsMax))
	}
	if c.RetryBackoff < 0 || c.RetryBackoff > 10*time.Second {
		errs = append(errs, fmt.Errorf("RetryBackoff: %s out of range [0, 10s]", c.RetryBackoff))
	}
	return errors.Join(errs...)
}

// Client calls one admitter. It is safe for concurrent use.
type Client struct{ cfg Config }

// New validates cfg and fills the defaults.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.AttemptsMax == 0 {
		cfg.AttemptsMax = 3
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = 50 * time.Millisecond
	}
	if cfg.ResponseBytesMax == 0 {
		cfg.ResponseBytesMax = 64 << 10
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	return &Client{cfg: cfg}, nil
}

// Admit asks whether req may start. It returns the answer when allowed, a *DeniedError
// (with the answer) when denied, and an *APIError or a transport error otherwise. An empty
// req.RequestID is filled with a fresh UUIDv7 that every retry reuses.
func (c *Client) Admit(ctx context.Context, req api.AdmitRequest) (*api.AdmitResponse, error) {
	if req.RequestID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("client: request id: %w", err)
		}
		req.RequestID = id.String()
	}
	var resp api.AdmitResponse
	status, err := c.call(ctx, api.PathAdmit, req, &resp)
	if err != nil {
		return nil, err
	}
	if status == http.StatusTooManyRequests {
		return &resp, &DeniedError{Reason: Reason(resp.Reason), RetryAfter: time.Duration(resp.RetryAfterMs) * time.Millisecond, Response: &resp}
	}
	return &resp, nil
}

// Finish settles an admitted request with its actual usage.
func (c *Client) Finish(ctx context.Context, req api.FinishRequest) (*api.FinishResponse, error) {
	var resp api.FinishResponse
	if _, err := c.call(ctx, api.PathFinish, req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// call posts body and decodes a 200 or 429 into out, retrying 503s and transport errors.
func (c *Client) call(ctx context.Context, path string, body, out any) (int, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return 0, fmt.Errorf("client: encode: %w", err)
	}
	// No Max below what AttemptsMax (at most 10) reaches: each wait doubles the last.
	policy := backoff.Policy{Min: c.cfg.RetryBackoff, Max: c.cfg.RetryBackoff << 9}
	var lastErr error
	for attempt := 1; attempt <= c.cfg.AttemptsMax; attempt++ {
		status, retry, err := c.once(ctx, path, raw, out)
		if err == nil {
			return status, nil
		}
		lastErr = err
		if !retry || attempt == c.cfg.AttemptsMax {
			break
		}
		if !backoff.Sleep(ctx, policy.Wait(int64(attempt))) {
			return 0, fmt.Errorf("client: %s: %w (last error: %v)", path, ctx.Err(), lastErr)
		}
	}
	return 0, lastErr
}

func (c *Client) once(ctx context.Context, path string, raw []byte, out any) (status int, retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.BaseURL+path, bytes.NewReader(raw))
	if err != nil {
		return 0, false, fmt.Errorf("client: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.cfg.APIKey)
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return 0, ctx.Err() == nil, fmt.Errorf("client: %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.ResponseBytesMax))
	if err != nil {
		return 0, ctx.Err() == nil, fmt.Errorf("client: %s: read: %w", path, err)
	}
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusTooManyRequests {
		if err := json.Unmarshal(b, out); err != nil {
			return 0, false, fmt.Errorf("client: %s: decode: %w", path, err)
		}
		return resp.StatusCode, false, nil
	}
	var eb api.ErrorBody
	_ = json.Unmarshal(b, &eb)
	ae := &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	return 0, resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode >= 500, ae
}
