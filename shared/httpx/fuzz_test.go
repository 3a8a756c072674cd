package httpx_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tallyhq/tally/shared/httpx"
)

// fuzzBody has the field kinds Tally's request bodies use: ids, int64 micros, a nested object,
// a pointer, a list and a map.
type fuzzBody struct {
	ID        string            `json:"id"`
	Amount    int64             `json:"amount_micros"`
	Flag      bool              `json:"flag"`
	Nested    *fuzzBody         `json:"nested"`
	Units     struct{ N int64 } `json:"units"`
	Tags      []string          `json:"tags"`
	Meta      map[string]string `json:"meta"`
	ExpiresAt *string           `json:"expires_at"`
}

// fuzzBytesMax is the body bound under fuzzing.
const fuzzBytesMax = 512

// FuzzDecodeJSON: for any body and content type, DecodeJSON never panics, answers either nil
// or an *Error with a 4xx status and one of its documented codes, which WriteError renders as
// the documented JSON shape; a body over the bound is always 413; an accepted body is one JSON
// object that encoding/json also accepts.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{"id":"a","amount_micros":5}`, `{"nested":{"nested":{"id":"x"}},"tags":["a"],"meta":{"k":"v"}}`,
		`{"amount_micros":9223372036854775808}`, `{"amount_micros":-9223372036854775808}`, `{"amount_micros":"NaN"}`,
		`{"amount_micros":NaN}`, `{"amount_micros":1e400}`, `{"id":"\ud800"}`, `{"ID":"a"}`, `{"id":"a"}{}`, `null`, `[]`,
		strings.Repeat("[", 600), strings.Repeat(`{"nested":`, 40) + "null" + strings.Repeat("}", 40), "\xef\xbb\xbf{}", ""} {
		f.Add(s, "application/json")
	}
	f.Add(`{"id":"a"}`, "text/plain")
	f.Add(`{"id":"a"}`, "application/json; charset=utf-8")
	f.Add(`{"id":"a"}`, "application/json;;")
	f.Add(`{"id":"a"}`, "")
	codes := map[string]int{httpx.CodeBadRequest: 400, httpx.CodeInvalidJSON: 400, httpx.CodeBodyTooLarge: 413, httpx.CodeUnsupportedMedia: 415}
	f.Fuzz(func(t *testing.T, body, contentType string) {
		if strings.ContainsAny(contentType, "\r\n\x00") {
			return // not a header value net/http would deliver
		}
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		if contentType != "" {
			r.Header.Set("Content-Type", contentType)
		}
		var v fuzzBody
		herr := httpx.DecodeJSON(r, fuzzBytesMax, &v)
		if herr == nil {
			if len(body) > fuzzBytesMax {
				t.Fatalf("accepted %d bytes over the %d-byte bound", len(body), fuzzBytesMax)
			}
			var std fuzzBody
			if err := json.Unmarshal([]byte(body), &std); err != nil {
				t.Fatalf("accepted %q that encoding/json refuses: %v", body, err)
			}
			return
		}
		if want, ok := codes[herr.Code]; !ok || herr.Status != want || herr.Message == "" {
			t.Fatalf("undocumented error %+v for %q", herr, body)
		}
		if len(body) > fuzzBytesMax && herr.Status != http.StatusRequestEntityTooLarge && herr.Status != http.StatusUnsupportedMediaType {
			t.Fatalf("%d-byte body answered %+v, want 413", len(body), herr)
		}
		rec := httptest.NewRecorder()
		httpx.WriteError(rec, herr)
		var shape struct {
			Error *struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&shape); err != nil || shape.Error == nil || shape.Error.Code != herr.Code ||
			rec.Code != herr.Status || rec.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("WriteError rendered %d %q (%v)", rec.Code, rec.Body, err)
		}
	})
}
