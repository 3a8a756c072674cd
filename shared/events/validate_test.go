package events_test

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// TestValidateTagsAgreeWithSchemas: the checks generated from the schema tags (validateTags)
// and the JSON Schemas generated from the same tags agree on boundary values of every field
// of every sample: what the generated checks refuse, the schema refuses; and what the schema
// refuses, Validate (the generated checks and the rules across fields) refuses.
func TestValidateTagsAgreeWithSchemas(t *testing.T) {
	s := compileEnvelope(t)
	ints := []int64{math.MinInt64, -events.MaxAmountMicros - 1, -events.MaxAmountMicros, -2, -1, 0, 1, 2, 32, 1000, 1001,
		10_000, 10_001, 604_800_000, 604_800_001, events.MaxUnit, events.MaxUnit + 1, events.MaxAmountMicros, events.MaxAmountMicros + 1, math.MaxInt64}
	strs := []string{"", "x", ".x", "a b", "a\x7f", strings.Repeat("a", events.MaxIDChars), strings.Repeat("a", events.MaxIDChars+1),
		strings.Repeat("é", 32), strings.Repeat("é", 33), strings.Repeat("r", events.MaxReasonChars+1), "critical", "credits", "split",
		"succeeded", "customer.held", "cash", "purchase", "endpoint", "account", "throttle", "usage_threshold", "balance_floor"}
	times := []time.Time{{}, time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(2199, 12, 31, 0, 0, 0, 0, time.UTC),
		time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)}
	floats := []float64{-1, 0, 1e12, 1.5e12}
	checked := 0
	for _, d := range samples() {
		ev, err := events.New("test", time.Date(2026, 11, 25, 7, 0, 0, 0, time.UTC), d)
		if err != nil {
			t.Fatal(err)
		}
		var env map[string]any
		raw, _ := ev.Encode()
		if err := json.Unmarshal(raw, &env); err != nil {
			t.Fatal(err)
		}
		try := func(path string, m events.Data) {
			data, err := json.Marshal(m)
			if err != nil {
				return // a time json.Marshal refuses
			}
			env["data"] = json.RawMessage(data)
			b, _ := json.Marshal(env)
			schemaErr := schemaValidate(s, b)
			if tagsErr := events.ValidateTags(m); tagsErr != nil && schemaErr == nil {
				t.Errorf("%s %s: validateTags refuses what the schema accepts: %v\n%s", d.EventType(), path, tagsErr, data)
			}
			if schemaErr != nil && m.Validate() == nil {
				t.Errorf("%s %s: Validate accepts what the schema refuses: %v\n%s", d.EventType(), path, schemaErr, data)
			}
			checked++
		}
		// Each settable field, nested structs included, set to each boundary value in turn.
		var walk func(v reflect.Value, path string, set func(path string))
		walk = func(v reflect.Value, path string, set func(path string)) {
			each := func(values any) {
				old := reflect.ValueOf(v.Interface())
				xs := reflect.ValueOf(values)
				for i := range xs.Len() {
					x := xs.Index(i)
					if x.CanInt() && v.OverflowInt(x.Int()) {
						continue
					}
					v.Set(x.Convert(v.Type()))
					set(path)
				}
				v.Set(old)
			}
			switch v.Kind() {
			case reflect.Struct:
				if v.Type() == reflect.TypeOf(time.Time{}) {
					each(times)
					return
				}
				for i := range v.NumField() {
					walk(v.Field(i), path+"."+v.Type().Field(i).Name, set)
				}
			case reflect.Pointer:
				if !v.IsNil() {
					walk(v.Elem(), path, set)
				}
			case reflect.Slice:
				for i := range v.Len() {
					walk(v.Index(i), path+"[]", set)
				}
			case reflect.Int64, reflect.Int32:
				each(ints)
			case reflect.String:
				each(strs)
			case reflect.Float64:
				each(floats)
			}
		}
		p := reflect.New(reflect.TypeOf(d)).Elem()
		p.Set(reflect.ValueOf(d))
		walk(p, "", func(path string) { try(path, p.Interface().(events.Data)) })
	}
	if checked < 1000 {
		t.Fatalf("checked %d payloads", checked)
	}
}
