package api_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/pricebook"
)

type nopReader struct{}

func (nopReader) Account(string) (view.Account, bool) { return view.Account{}, false }
func (nopReader) Entries(string, view.EntriesQuery) (view.Entries, bool) {
	return view.Entries{}, false
}
func (nopReader) Ready() bool { return true }

// TestOpenAPIMatchesRoutes checks that every documented path and method is routed (it does
// not answer "no route" or 405) and that every route is documented.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	raw, err := os.ReadFile("../openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q, want 3.x", doc.OpenAPI)
	}
	var documented []string
	for path, ops := range doc.Paths {
		for m := range ops {
			if m == "parameters" {
				continue
			}
			documented = append(documented, strings.ToUpper(m)+" "+path)
		}
	}
	var routed []string
	for _, r := range api.Routes {
		routed = append(routed, r.String())
	}
	sort.Strings(documented)
	sort.Strings(routed)
	if strings.Join(documented, "\n") != strings.Join(routed, "\n") {
		t.Fatalf("documented:\n%s\nrouted:\n%s", strings.Join(documented, "\n"), strings.Join(routed, "\n"))
	}
	keys, _ := httpx.ParseKeyring("ops:" + httpx.HashSecret("s"))
	h := api.Handler(api.Config{Admin: keys, Book: pricebook.Default(), BodyBytesMax: 1024, PageMax: 10, Gatherer: prometheus.NewRegistry()}, nopReader{}, nil)
	for _, r := range api.Routes {
		req := httptest.NewRequest(r.Method, strings.ReplaceAll(r.Path, "{id}", "acme"), nil)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code == http.StatusMethodNotAllowed || strings.Contains(w.Body.String(), "no route") {
			t.Errorf("%s: not routed: %d %s", r, w.Code, w.Body.String())
		}
	}
}

// TestOpenAPIAuthAndRefs: every operation behind a key documents 401, 403 and 429 (a
// throttled address gets too_many_auth_failures on every authenticated route, so a client
// generated from the document must expect it), and every $ref in the document resolves.
func TestOpenAPIAuthAndRefs(t *testing.T) {
	raw, err := os.ReadFile("../openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	global, _ := doc["security"].([]any)
	for path, item := range doc["paths"].(map[string]any) {
		for method, v := range item.(map[string]any) {
			op, ok := v.(map[string]any)
			if !ok || op["responses"] == nil {
				continue
			}
			sec, given := op["security"].([]any)
			if !given {
				sec = global
			}
			if len(sec) == 0 {
				continue
			}
			for _, code := range []string{"401", "403", "429"} {
				if _, ok := op["responses"].(map[string]any)[code]; !ok {
					t.Errorf("%s %s: behind a key but %s is not documented", strings.ToUpper(method), path, code)
				}
			}
		}
	}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				var cur any = doc
				for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
					m, _ := cur.(map[string]any)
					cur = m[part]
				}
				if cur == nil {
					t.Errorf("$ref %s does not resolve", ref)
				}
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(doc)
}
