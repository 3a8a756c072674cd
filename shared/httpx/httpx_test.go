package httpx_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tallyhq/tally/shared/httpx"
)

type body struct {
	Name   string `json:"name"`
	Amount int64  `json:"amount_micros"`
}

func TestDecodeJSON(t *testing.T) {
	for _, tc := range []struct {
		name, ct, in string
		status       int
		code         string
	}{
		{"ok", "application/json", `{"name":"a","amount_micros":5}`, 0, ""},
		{"ok charset", "application/json; charset=utf-8", `{"name":"a"}`, 0, ""},
		{"no content type", "", `{"name":"a"}`, 0, ""},
		{"wrong content type", "text/plain", `{"name":"a"}`, 415, httpx.CodeUnsupportedMedia},
		{"too large", "application/json", `{"name":"` + strings.Repeat("x", 200) + `"}`, 413, httpx.CodeBodyTooLarge},
		{"unknown field", "application/json", `{"nme":"a"}`, 400, httpx.CodeInvalidJSON},
		{"bad type", "application/json", `{"amount_micros":"5"}`, 400, httpx.CodeInvalidJSON},
		{"float amount", "application/json", `{"amount_micros":1.5}`, 400, httpx.CodeInvalidJSON},
		{"huge number", "application/json", `{"amount_micros":1e400}`, 400, httpx.CodeInvalidJSON},
		{"NaN string", "application/json", `{"amount_micros":"NaN"}`, 400, httpx.CodeInvalidJSON},
		{"trailing", "application/json", `{"name":"a"}{}`, 400, httpx.CodeInvalidJSON},
		{"empty", "application/json", ``, 400, httpx.CodeInvalidJSON},
		{"syntax", "application/json", `{"name":`, 400, httpx.CodeInvalidJSON},
		{"deep nesting", "application/json", strings.Repeat("[", 60) + strings.Repeat("]", 60), 400, httpx.CodeInvalidJSON},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/", strings.NewReader(tc.in))
			if tc.ct != "" {
				r.Header.Set("Content-Type", tc.ct)
			}
			var b body
			err := httpx.DecodeJSON(r, 128, &b)
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || err.Status != tc.status || err.Code != tc.code {
				t.Fatalf("got %+v, want %d %s", err, tc.status, tc.code)
			}
		})
	}
}

func TestWriteErrorShape(t *testing.T) {
	for _, err := range []error{httpx.Errorf(404, httpx.CodeNotFound, "nope"), errors.New("plain")} {
		w := httptest.NewRecorder()
		httpx.WriteError(w, err)
		var got struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if e := json.Unmarshal(w.Body.Bytes(), &got); e != nil || got.Error.Code == "" || got.Error.Message == "" {
			t.Fatalf("body %q: %v", w.Body.String(), e)
		}
		if w.Code < 400 || w.Code >= 500 || w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("status %d, content type %q", w.Code, w.Header().Get("Content-Type"))
		}
	}
}

func TestKeyring(t *testing.T) {
	k, err := httpx.ParseKeyring("edge-1:" + httpx.HashSecret("s3cret") + ", edge-2:" + httpx.HashSecret("other"))
	if err != nil || k.Len() != 2 {
		t.Fatalf("parse: %v", err)
	}
	for _, tc := range []struct {
		header string
		id     string
		status int
	}{
		{"Bearer s3cret", "edge-1", 0}, {"Bearer other", "edge-2", 0}, {"", "", 401}, {"Bearer ", "", 401},
		{"Basic s3cret", "", 401}, {"Bearer s3cret2", "", 403}, {"Bearer S3CRET", "", 403},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		id, e := k.Authenticate(r)
		if id != tc.id || (e == nil) != (tc.status == 0) || (e != nil && e.Status != tc.status) {
			t.Errorf("%q: got %q, %v; want %q, %d", tc.header, id, e, tc.id, tc.status)
		}
	}
	for _, bad := range []string{"nohash", "id:zz", "id:" + strings.Repeat("a", 10), ":" + httpx.HashSecret("x")} {
		if _, err := httpx.ParseKeyring(bad); err == nil {
			t.Errorf("ParseKeyring(%q) accepted", bad)
		}
	}
}

func TestRecover(t *testing.T) {
	var got any
	h := httpx.Recover(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }), func(p any) { got = p })
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	if w.Code != 500 || got != "boom" || !strings.Contains(w.Body.String(), `"code":"internal"`) {
		t.Fatalf("status %d body %s recovered %v", w.Code, w.Body.String(), got)
	}
}

// TestDecodeJSONRefusesNull: a null field would decode as its zero value (an omitted
// optional field) although the OpenAPI documents give no field a null type.
func TestDecodeJSONRefusesNull(t *testing.T) {
	type body struct {
		A *string `json:"a"`
		B []int   `json:"b"`
		S string  `json:"s"`
	}
	for in, want := range map[string]string{
		`{"a":null}`:             httpx.CodeInvalidJSON,
		`{"b":[1,null]}`:         httpx.CodeInvalidJSON,
		` { "a" : null } `:       httpx.CodeInvalidJSON,
		`{"s":"null \" n"}`:      "",
		`{"s":"\\"}`:             "",
		`{"s":"x\\\"null\\\"y"}`: "",
	} {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(in))
		r.Header.Set("Content-Type", "application/json")
		var v body
		err := httpx.DecodeJSON(r, 1024, &v)
		got := ""
		if err != nil {
			got = err.Code
		}
		if got != want {
			t.Errorf("%s: %v, want code %q", in, err, want)
		}
	}
}
