// Package httpx holds the HTTP conventions every Tally service shares: JSON errors with a
// stable machine code, bounded strict JSON decoding, bearer-key authentication, and servers
// with every timeout set.
package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	fastjson "github.com/segmentio/encoding/json"

	"github.com/tallyhq/tally/shared/bounds"
)

// Stable error codes. Clients switch on these; the message is for people.
const (
	CodeBadRequest       = "bad_request"
	CodeInvalidJSON      = "invalid_json"
	CodeValidation       = "validation_failed"
	CodeBodyTooLarge     = "body_too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeUnauthenticated  = "unauthenticated"
	CodeForbidden        = "forbidden"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeConflict         = "conflict"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
	// CodeTooManyAuthFailures (429): this client address failed authentication too often;
	// Retry-After says when it may try again.
	CodeTooManyAuthFailures = "too_many_auth_failures"
)

// Error is the JSON body of every error answer: {"error":{"code":..., "message":...}}.
type Error struct {
	Status int `json:"-"`
	// RetryAfterSeconds, when positive, is sent as the Retry-After header.
	RetryAfterSeconds int    `json:"-"`
	Code              string `json:"code"`
	Message           string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an *Error.
func Errorf(status int, code, format string, a ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, a...)}
}

// WriteJSON writes v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":{"code":"internal","message":"encode response"}}` + "\n")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// WriteError writes err as the JSON error shape; a non-*Error becomes 400 bad_request.
func WriteError(w http.ResponseWriter, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: err.Error()}
	}
	if e.RetryAfterSeconds > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfterSeconds))
	}
	WriteJSON(w, e.Status, struct {
		Error *Error `json:"error"`
	}{e})
}

// DecodeJSON reads one JSON object from r's body into v: at most bytesMax (413 beyond),
// content type application/json (415 otherwise), unknown fields and trailing data rejected
// (400). It never panics on hostile input.
func DecodeJSON(r *http.Request, bytesMax int64, v any) *Error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return Errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "content type must be application/json")
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, bytesMax+1))
	if err != nil {
		return Errorf(http.StatusBadRequest, CodeBadRequest, "read body: %v", err)
	}
	if int64(len(body)) > bytesMax {
		return Errorf(http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "body larger than %d bytes", bytesMax)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return Errorf(http.StatusBadRequest, CodeInvalidJSON, "empty body")
	}
	if nestedNull(body) {
		// null would decode as the field's zero value, which the documents do not allow:
		// an optional field is omitted, not null.
		return Errorf(http.StatusBadRequest, CodeInvalidJSON, "null is not a value here: omit the field instead")
	}
	// segmentio/encoding/json: encoding/json's semantics, several times faster, and field
	// names must match exactly (encoding/json would accept "Account_ID").
	rest, err := fastjson.Parse(body, v, fastjson.DisallowUnknownFields|fastjson.DontMatchCaseInsensitiveStructFields)
	if err != nil {
		return Errorf(http.StatusBadRequest, CodeInvalidJSON, "%s", jsonMessage(err))
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return Errorf(http.StatusBadRequest, CodeInvalidJSON, "trailing data after the JSON object")
	}
	return nil
}

// nestedNull reports a null literal inside an object or array of body (a top-level null is
// left to the decoder and the validation after it). Outside strings the only bare word
// starting with 'n' is null, so one pass over the bytes decides, without allocating.
func nestedNull(body []byte) bool {
	depth, inString := 0, false
	for i := 0; i < len(body); i++ {
		c := body[i]
		if inString {
			switch c {
			case '\\':
				i++
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
		case '}', ']':
			depth--
		case 'n':
			if depth > 0 {
				return true
			}
		}
	}
	return false
}

func jsonMessage(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return fmt.Sprintf("field %q: want %s, got JSON %s", te.Field, te.Type, te.Value)
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)
	case errors.Is(err, io.EOF):
		return "empty body"
	}
	return err.Error()
}

// Validation wraps a Validate() error as 400 validation_failed.
func Validation(err error) *Error {
	return Errorf(http.StatusBadRequest, CodeValidation, "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
}

// NotFound answers unknown routes with the JSON error shape.
func NotFound(w http.ResponseWriter, r *http.Request) {
	WriteError(w, Errorf(http.StatusNotFound, CodeNotFound, "no route %s %s", r.Method, r.URL.Path))
}

// Recover turns a panic in h into a logged 500 with the JSON shape, so that no client ever
// sees a dropped connection. Handlers are written never to panic; this is the last guard.
func Recover(h http.Handler, onPanic func(any)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if onPanic != nil {
					onPanic(p)
				}
				WriteError(w, Errorf(http.StatusInternalServerError, CodeInternal, "internal error"))
			}
		}()
		h.ServeHTTP(w, r)
	})
}

// ServerConfig bounds an HTTP server.
type ServerConfig struct {
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
}

// DefaultServerConfig: 5 s to read headers, 15 s to read a request, 30 s to write, 120 s idle,
// 64 KiB of headers. Slow clients are cut off by these.
var DefaultServerConfig = ServerConfig{ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
	WriteTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10}

// NewServer returns an http.Server with every timeout set.
func NewServer(addr string, h http.Handler, c ServerConfig) *http.Server {
	return &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: c.ReadHeaderTimeout, ReadTimeout: c.ReadTimeout,
		WriteTimeout: c.WriteTimeout, IdleTimeout: c.IdleTimeout, MaxHeaderBytes: c.MaxHeaderBytes}
}

// ServerSettings are a server's HTTP bounds as environment settings. A service embeds it with
// its prefix, `HTTP httpx.ServerSettings envPrefix:"ADMITTER_"`, which reads
// ADMITTER_HTTP_READ_HEADER_TIMEOUT_MS and so on.
type ServerSettings struct {
	// ReadHeaderTimeoutMs bounds reading a request's headers: a client that stalls in them is cut off (1..600000).
	ReadHeaderTimeoutMs int64 `env:"HTTP_READ_HEADER_TIMEOUT_MS" envDefault:"5000"`
	// ReadTimeoutMs bounds reading a whole request, headers and body: a client that stalls in the body is cut off (1..600000).
	ReadTimeoutMs int64 `env:"HTTP_READ_TIMEOUT_MS" envDefault:"15000"`
	// WriteTimeoutMs bounds writing the answer (1..600000).
	WriteTimeoutMs int64 `env:"HTTP_WRITE_TIMEOUT_MS" envDefault:"30000"`
	// IdleTimeoutMs bounds how long a keep-alive connection waits for its next request (1..3600000).
	IdleTimeoutMs int64 `env:"HTTP_IDLE_TIMEOUT_MS" envDefault:"120000"`
	// HeaderBytesMax bounds the request headers (1024..1048576).
	HeaderBytesMax int64 `env:"HTTP_HEADER_MAX_BYTES" envDefault:"65536"`
}

// DefaultServerSettings are the envDefault values, for code-built configurations.
var DefaultServerSettings = ServerSettings{ReadHeaderTimeoutMs: 5000, ReadTimeoutMs: 15_000,
	WriteTimeoutMs: 30_000, IdleTimeoutMs: 120_000, HeaderBytesMax: 64 << 10}

// ValidateEnv reports every setting out of range, named with the service's prefix.
func (s ServerSettings) ValidateEnv(prefix string) error {
	var errs []error
	for _, f := range []struct {
		name      string
		v, lo, hi int64
	}{
		{"HTTP_READ_HEADER_TIMEOUT_MS", s.ReadHeaderTimeoutMs, 1, 600_000},
		{"HTTP_READ_TIMEOUT_MS", s.ReadTimeoutMs, 1, 600_000},
		{"HTTP_WRITE_TIMEOUT_MS", s.WriteTimeoutMs, 1, 600_000},
		{"HTTP_IDLE_TIMEOUT_MS", s.IdleTimeoutMs, 1, 3_600_000},
		{"HTTP_HEADER_MAX_BYTES", s.HeaderBytesMax, 1024, 1 << 20},
	} {
		if err := bounds.Check(prefix+f.name, f.v, f.lo, f.hi); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Config converts the settings into the server's bounds.
func (s ServerSettings) Config() ServerConfig {
	ms := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	return ServerConfig{ReadHeaderTimeout: ms(s.ReadHeaderTimeoutMs), ReadTimeout: ms(s.ReadTimeoutMs),
		WriteTimeout: ms(s.WriteTimeoutMs), IdleTimeout: ms(s.IdleTimeoutMs), MaxHeaderBytes: int(s.HeaderBytesMax)}
}
