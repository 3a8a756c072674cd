package schemagen

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestObjectFromTags: a struct's schema follows its json and schema tags (one new field is one
// new property), and a tag the generator does not know is an error, not silently dropped.
func TestObjectFromTags(t *testing.T) {
	type inner struct {
		N int32 `json:"n" schema:"min=0"`
	}
	type sample struct {
		A string     `json:"a" schema:"id"`
		B int64      `json:"b,omitempty" schema:"amount,min=1" doc:"bee"`
		C *time.Time `json:"c,omitempty"`
		D []int32    `json:"d" schema:"maxItems=MaxNotifyThresholds,items.min=1"`
		E inner      `json:"e"`
		F string     `json:"f,omitempty" schema:"enum=x|y|"`
	}
	o, err := object(reflect.TypeOf(sample{}))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	write(&b, o, "")
	var got map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	props := got["properties"].(map[string]any)
	if len(props) != 6 || got["additionalProperties"] != false {
		t.Fatalf("properties %v, additionalProperties %v", props, got["additionalProperties"])
	}
	if req := got["required"]; !reflect.DeepEqual(req, []any{"a", "d", "e"}) {
		t.Errorf("required %v, want [a d e]", req)
	}
	if a := props["a"].(map[string]any); a["minLength"] != 1.0 || a["pattern"] != IDPattern {
		t.Errorf("a: %v", a)
	}
	if p := props["b"].(map[string]any); p["minimum"] != 1.0 || p["maximum"] != 1e15 || p["description"] != "bee" {
		t.Errorf("b: %v", p)
	}
	if c := props["c"].(map[string]any); c["format"] != "date-time" || c["pattern"] != YearPattern {
		t.Errorf("c: %v", c)
	}
	if d := props["d"].(map[string]any); d["maxItems"] != 8.0 || d["items"].(map[string]any)["minimum"] != 1.0 {
		t.Errorf("d: %v", d)
	}
	if e := props["e"].(map[string]any); !reflect.DeepEqual(e["required"], []any{"n"}) {
		t.Errorf("e: %v", e)
	}
	if f := props["f"].(map[string]any); !reflect.DeepEqual(f["enum"], []any{"x", "y", ""}) {
		t.Errorf("f: %v", f)
	}

	type bad struct {
		A string `json:"a" schema:"idd"`
	}
	if _, err := object(reflect.TypeOf(bad{})); err == nil || !strings.Contains(err.Error(), "unknown item") {
		t.Errorf("unknown tag item: err %v", err)
	}
	type badBound struct {
		A int64 `json:"a" schema:"max=MaxNothing"`
	}
	if _, err := object(reflect.TypeOf(badBound{})); err == nil {
		t.Error("unknown constant accepted")
	}
}
