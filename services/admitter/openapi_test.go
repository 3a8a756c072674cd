package admitter

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

type oaSchema struct {
	Type                 string               `json:"type"`
	Ref                  string               `json:"$ref"`
	Required             []string             `json:"required"`
	Properties           map[string]*oaSchema `json:"properties"`
	Items                *oaSchema            `json:"items"`
	Enum                 []string             `json:"enum"`
	AdditionalProperties *bool                `json:"additionalProperties"`
}

type oaDoc struct {
	Paths      map[string]map[string]struct{ Responses map[string]json.RawMessage } `json:"paths"`
	Components struct {
		Schemas map[string]*oaSchema `json:"schemas"`
	} `json:"components"`
}

func loadDoc(t *testing.T) *oaDoc {
	t.Helper()
	var d oaDoc
	if err := json.Unmarshal(api.OpenAPI, &d); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return &d
}

// TestOpenAPIMatchesGoTypes checks every documented schema against the Go type the handlers
// encode or decode: the same JSON names, the same required set (fields without omitempty),
// compatible types, and closed request bodies (the handlers reject unknown fields).
func TestOpenAPIMatchesGoTypes(t *testing.T) {
	d := loadDoc(t)
	pairs := map[string]any{"Units": events.Units{}, "AdmitRequest": api.AdmitRequest{}, "AdmitResponse": api.AdmitResponse{},
		"Remaining": api.Remaining{}, "Window": api.Window{}, "FinishRequest": api.FinishRequest{},
		"FinishResponse": api.FinishResponse{}, "Error": api.ErrorBody{}}
	for name, v := range pairs {
		s := d.Components.Schemas[name]
		if s == nil {
			t.Errorf("schema %s missing", name)
			continue
		}
		checkSchema(t, d, name, s, reflect.TypeOf(v))
	}
	for _, name := range []string{"AdmitRequest", "FinishRequest", "Units"} {
		if ap := d.Components.Schemas[name].AdditionalProperties; ap == nil || *ap {
			t.Errorf("%s: request schemas must say additionalProperties: false", name)
		}
	}
	// Enums carry exactly the codes the Go side defines.
	reasons := d.Components.Schemas["AdmitResponse"].Properties["reason"].Enum
	want := []string{api.ReasonSuspended, api.ReasonBlocked, api.ReasonOverloaded, api.ReasonConcurrencyLimited,
		api.ReasonRateLimited, api.ReasonBudgetExhausted, api.ReasonInsufficientCredits}
	if fmt.Sprint(reasons) != fmt.Sprint(want) {
		t.Errorf("reason enum %v, want %v", reasons, want)
	}
	// ... and the decision core's (account_table_full is answered 503, not as a reason).
	core := slices.DeleteFunc(decide.Reasons(), func(r string) bool { return r == decide.ReasonTableFull.String() })
	if fmt.Sprint(core) != fmt.Sprint(want) {
		t.Errorf("decide reasons %v, want %v", core, want)
	}
}

func checkSchema(t *testing.T, d *oaDoc, name string, s *oaSchema, typ reflect.Type) {
	t.Helper()
	if s.Ref != "" {
		s = d.Components.Schemas[strings.TrimPrefix(s.Ref, "#/components/schemas/")]
	}
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	kind := map[reflect.Kind]string{reflect.String: "string", reflect.Int64: "integer", reflect.Int32: "integer",
		reflect.Bool: "boolean", reflect.Slice: "array", reflect.Struct: "object"}[typ.Kind()]
	if typ.String() == "time.Time" {
		if s.Type != "string" {
			t.Errorf("%s: time must be a string, doc says %q", name, s.Type)
		}
		return
	}
	if s.Type != "" && s.Type != kind {
		t.Errorf("%s: doc type %q, Go %s", name, s.Type, typ)
	}
	switch typ.Kind() {
	case reflect.Slice:
		checkSchema(t, d, name+"[]", s.Items, typ.Elem())
	case reflect.Struct:
		var goNames, goRequired []string
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			tag := strings.Split(f.Tag.Get("json"), ",")
			if tag[0] == "-" || tag[0] == "" {
				continue
			}
			goNames = append(goNames, tag[0])
			if len(tag) == 1 {
				goRequired = append(goRequired, tag[0])
			}
			p := s.Properties[tag[0]]
			if p == nil {
				t.Errorf("%s.%s: in Go, not in the doc", name, tag[0])
				continue
			}
			checkSchema(t, d, name+"."+tag[0], p, f.Type)
		}
		var docNames []string
		for k := range s.Properties {
			docNames = append(docNames, k)
		}
		sort.Strings(goNames)
		sort.Strings(docNames)
		if fmt.Sprint(goNames) != fmt.Sprint(docNames) {
			t.Errorf("%s: properties doc %v, Go %v", name, docNames, goNames)
		}
		// Request fields the handlers require are validated, not tagged; compare the
		// response side exactly and the request side as "doc required ⊆ Go fields".
		if strings.HasSuffix(name, "Response") || name == "Remaining" || name == "Window" {
			req := append([]string(nil), s.Required...)
			sort.Strings(req)
			sort.Strings(goRequired)
			if fmt.Sprint(req) != fmt.Sprint(goRequired) {
				t.Errorf("%s: required doc %v, Go (no omitempty) %v", name, req, goRequired)
			}
		}
	}
}

// TestOpenAPIMatchesHandlers checks the routes both ways and that every status the handlers
// answer in a tour of the API is documented for that path.
func TestOpenAPIMatchesHandlers(t *testing.T) {
	d := loadDoc(t)
	c := kafkatest.Start(t)
	seed(t, c, bal("ent", "enterprise", 1e9), bal("poor", "enterprise", 0))
	s := start(t, testConfig(t, c))
	routes := s.routes()
	for path, rt := range routes {
		ops, ok := d.Paths[path]
		if _, has := ops[strings.ToLower(rt.method)]; !ok || !has || len(ops) != 1 {
			t.Errorf("route %s %s: doc has %v", rt.method, path, ops)
		}
	}
	for path := range d.Paths {
		if _, ok := routes[path]; !ok {
			t.Errorf("doc path %s has no handler", path)
		}
	}
	calls := []struct {
		path, key string
		body      any
	}{
		{api.PathAdmit, testSecret, codeReq("oa-1", "ent")},
		{api.PathAdmit, testSecret, codeReq("oa-2", "poor")},
		{api.PathAdmit, testSecret, `{"account_id":"x","endpoint":"nope"}`},
		{api.PathAdmit, testSecret, `{"bogus":1}`},
		{api.PathAdmit, "", `{}`},
		{api.PathAdmit, "wrong", `{}`},
		{api.PathAdmit, testSecret, `{"account_id":"` + strings.Repeat("a", 9000) + `"}`},
		{api.PathAdmit, testSecret, func() any { r := codeReq("oa-1", "ent"); r.Model = "codex-mini"; return r }()},
		{api.PathFinish, testSecret, api.FinishRequest{RequestID: "oa-1", Status: "succeeded"}},
		{api.PathFinish, testSecret, api.FinishRequest{RequestID: "oa-1", Status: "failed"}},
		{api.PathFinish, testSecret, api.FinishRequest{RequestID: "oa-404", Status: "failed"}},
		{api.PathFinish, testSecret, `{"request_id":1}`},
	}
	for _, call := range calls {
		a := post(t, s.url+call.path, call.key, call.body)
		if _, ok := d.Paths[call.path]["post"].Responses[fmt.Sprint(a.status)]; !ok {
			t.Errorf("%s answered %d, not documented: %s", call.path, a.status, a.body)
		}
	}
	// Wrong keys from one address are throttled: the 429 and its code are documented on both
	// routes.
	var codes struct {
		Components struct {
			Schemas struct {
				Error struct {
					Properties struct {
						Error struct {
							Properties struct {
								Code struct {
									Enum []string `json:"enum"`
								} `json:"code"`
							} `json:"properties"`
						} `json:"error"`
					} `json:"properties"`
				} `json:"Error"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(api.OpenAPI, &codes); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{api.PathFinish, api.PathAdmit} {
		var a answer
		for i := 0; i < 200; i++ {
			if a = post(t, s.url+path, "wrong", `{}`); a.status == http.StatusTooManyRequests {
				break
			}
		}
		if a.status != http.StatusTooManyRequests {
			t.Fatalf("%s: 200 wrong keys never throttled: %d %s", path, a.status, a.body)
		}
		if _, ok := d.Paths[path]["post"].Responses["429"]; !ok {
			t.Errorf("%s answered 429 (%s), not documented", path, a.body)
		}
		var e struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal(a.body, &e); err != nil || !slices.Contains(codes.Components.Schemas.Error.Properties.Error.Properties.Code.Enum, e.Error.Code) {
			t.Errorf("%s: throttled answer %s: code not in the Error enum %v", path, a.body, codes.Components.Schemas.Error.Properties.Error.Properties.Code.Enum)
		}
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json"} {
		resp, err := http.Get(s.url + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if _, ok := d.Paths[p]["get"].Responses[fmt.Sprint(resp.StatusCode)]; !ok {
			t.Errorf("%s answered %d, not documented", p, resp.StatusCode)
		}
	}
}
