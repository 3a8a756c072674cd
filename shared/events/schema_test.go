package events_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/tallyhq/tally/shared/events"
)

const schemaDir = "../../schemas/events"
const schemaBase = "https://tally.dev/schemas/events/"

// compileEnvelope compiles schemas/events/envelope.json (which references every data schema)
// with a real JSON Schema (draft 2020-12) validator, asserting formats such as date-time.
func compileEnvelope(t *testing.T) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	files, err := filepath.Glob(filepath.Join(schemaDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no schemas in %s: %v", schemaDir, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := c.AddResource(schemaBase+filepath.Base(f), doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	s, err := c.Compile(schemaBase + "envelope.json")
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	return s
}

func schemaValidate(s *jsonschema.Schema, b []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// samples returns one valid payload of every event type.
func samples() []events.Data {
	t0 := time.Date(2026, 11, 25, 7, 0, 0, 0, time.UTC)
	exp := t0.Add(365 * 24 * time.Hour)
	return []events.Data{
		events.RequestStarted{RequestID: "r1", AccountID: "a1", Endpoint: "sora.video", Model: "sora-2", Tier: "plus",
			Priority: events.PriorityStandard, Funding: events.FundingCredits, Estimate: events.Units{VideoSeconds: 10, Resolution: "1080p"},
			EstimateMicros: 4_000_000, HoldMicros: 4_000_000, HoldExpiresAt: t0.Add(15 * time.Minute), PriceBookVersion: "v1",
			KeyID: "k1", ClientAddr: "203.0.113.7"},
		events.RequestStarted{RequestID: "r2", AccountID: "a1", Endpoint: "codex.responses", Tier: "plus",
			Priority: events.PriorityBatch, Funding: events.FundingAllowance, Estimate: events.Units{TokensIn: 1000, TokensOut: 500},
			EstimateMicros: 4500, AllowanceMicros: 4500, HoldExpiresAt: t0.Add(5 * time.Minute), PriceBookVersion: "v1"},
		events.RequestRejected{RequestID: "r3", AccountID: "a1", Endpoint: "sora.video", Tier: "free", Priority: events.PriorityBatch,
			Reason: "rate_limited", RetryAfterMs: 1500, EstimateMicros: 100, PriceBookVersion: "v1", ClientAddr: "::1"},
		events.RequestFinished{RequestID: "r1", AccountID: "a1", Endpoint: "sora.video", Status: events.StatusSucceeded,
			Usage: events.Units{VideoSeconds: 8, Resolution: "1080p"}, CostMicros: 3_200_000, DurationMs: 42_000, PriceBookVersion: "v1"},
		events.RequestStarted{RequestID: "r4", AccountID: "a1", Endpoint: "sora.video", Tier: "free",
			Priority: events.PriorityStandard, Funding: events.FundingSplit, Estimate: events.Units{VideoSeconds: 5, Resolution: "1080p"},
			EstimateMicros: 2_000_000, AllowanceMicros: 1_000_000, HoldMicros: 1_000_000, HoldExpiresAt: t0.Add(15 * time.Minute), PriceBookVersion: "v1"},
		events.RequestFinished{RequestID: "r4", AccountID: "a1", Endpoint: "sora.video", Status: events.StatusSucceeded,
			Usage: events.Units{VideoSeconds: 600, Resolution: "1080p"}, CostMicros: 240_000_000, AllowanceMicros: 20_000_000,
			CreditsMicros: 100_000_000, OverageMicros: 120_000_000, DurationMs: 42_000, PriceBookVersion: "v1"},
		events.RequestExpired{RequestID: "r4", AccountID: "a1", Endpoint: "sora.video", Funding: events.FundingSplit,
			HoldMicros: 10, AllowanceMicros: 5, ReleasedMicros: 15, StartedEventID: "e4", ExpiredAt: t0},
		events.RequestExpired{RequestID: "r1", AccountID: "a1", Endpoint: "sora.video", Funding: events.FundingCredits,
			HoldMicros: 10, ReleasedMicros: 10, StartedEventID: "e1", ExpiredAt: t0},
		events.CreditsGranted{GrantID: "g1", AccountID: "a1", AmountMicros: 1, Source: events.GrantPromotion, Priority: 10, ExpiresAt: &exp},
		events.CreditsGranted{GrantID: "g2", AccountID: "a1", AmountMicros: events.MaxAmountMicros, Source: events.GrantPurchase},
		events.CreditsGranted{GrantID: "purchase:p1", AccountID: "a1", AmountMicros: 5, Source: events.GrantPurchase, Priority: 100,
			AdminKeyID: "billing", PaymentRef: "pi_3Nabc"},
		events.CreditsAdjusted{AdjustmentID: "adj1", AccountID: "a1", AmountMicros: -5, Reason: "refund of a failed render"},
		events.AccountUpdated{AccountID: "a1", Tier: "pro", Priority: events.PriorityCritical, Suspended: true},
		events.BalanceUpdated{AccountID: "a1", Tier: "pro", Priority: events.PriorityStandard, AvailableMicros: 5, HeldMicros: 1,
			Allowance: []events.AllowanceWindow{{Window: "5h", Start: t0, UsedMicros: 3}}, Partition: 2, Offset: 99},
		events.BalanceUpdated{AccountID: "a2", Offset: -1},
		events.BalanceUpdated{AccountID: "a3", AvailableMicros: 1<<63 - 1, HeldMicros: 2 * events.MaxAmountMicros,
			Expiring: []events.ExpiringGrant{{ExpiresAt: t0, RemainingMicros: 7}, {ExpiresAt: exp, RemainingMicros: 3 * events.MaxAmountMicros}}, Offset: 5},
		events.ClockTick{Partition: 3},
		events.BudgetChanged{AccountID: "org-1", ProjectID: "p1", BudgetMicros: events.MaxAmountMicros, AdminKeyID: "ops"},
		events.BudgetChanged{AccountID: "org-1", ProjectID: "p1", Remove: true},
		events.AccountUpdated{AccountID: "a4", Tier: "pro", Priority: events.PriorityStandard, OrganizationID: ptr("org-1"),
			NotifyUsagePermille: &[]int32{500, 1000}, NotifyFloorMicros: ptr[int64](5), AutoTopUpThresholdMicros: ptr[int64](10), AutoTopUpAmountMicros: ptr[int64](20)},
		events.AccountUpdated{AccountID: "a5", Tier: "pro", Priority: events.PriorityStandard, NotifyUsagePermille: &[]int32{}, OrganizationID: ptr(""),
			NotifyFloorMicros: ptr[int64](0), AutoTopUpThresholdMicros: ptr[int64](0), AutoTopUpAmountMicros: ptr[int64](0)},
		events.SubscriptionChanged{AccountID: "a1", PlanID: "pro", AnchorAt: t0, AdminKeyID: "k1"},
		events.SubscriptionChanged{AccountID: "a1", PlanID: "", AnchorAt: t0},
		events.Notification{NotificationID: "n1", AccountID: "a1", Kind: events.NotifyUsageThreshold, ThresholdPermille: 800,
			PeriodStart: t0, PeriodEnd: exp, UsedMicros: 80, AllocationMicros: 100, AvailableMicros: 20},
		events.Notification{NotificationID: "n2", AccountID: "a1", Kind: events.NotifyBalanceFloor, FloorMicros: 50,
			PeriodStart: t0, PeriodEnd: exp, AvailableMicros: 20},
		events.TopUpRequested{TopUpID: "t1", AccountID: "a1", AmountMicros: 100, ThresholdMicros: 10, AvailableMicros: 9},
		events.LimitsAdjusted{Scope: events.ScopeEndpoint, Endpoint: "sora.video", Priority: events.PriorityBatch, FactorPermille: 500, Reason: "load"},
		events.LimitsAdjusted{Scope: events.ScopeAccount, AccountID: "a1", FactorPermille: 0, Reason: "abuse_block"},
		events.LedgerEntry{EntryID: "e1", TransactionID: "t1", AccountID: "a1", LedgerAccount: events.LedgerHeld, AmountMicros: -10,
			Kind: "charge", CauseEventID: "c1", RequestID: "r1", EffectiveAt: t0},
		events.AbuseFlagged{FlagID: "f1", AccountID: "a1", KeyID: "k1", Rule: "burst", Score: 7.5, Action: events.ActionThrottle,
			WindowStart: t0, WindowEnd: t0.Add(time.Minute), Evidence: map[string]string{"rate_per_min": "900"}},
	}
}

// TestGoTypesValidateAgainstSchemas encodes every Go event type and validates the JSON with the
// JSON Schema, and decodes it back with Decode (which runs Validate).
func TestGoTypesValidateAgainstSchemas(t *testing.T) {
	s := compileEnvelope(t)
	seen := map[string]bool{}
	for _, d := range samples() {
		ev, err := events.New("test", time.Now(), d)
		if err != nil {
			t.Fatalf("%s: New: %v", d.EventType(), err)
		}
		b, err := ev.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if err := schemaValidate(s, b); err != nil {
			t.Errorf("%s: schema rejects the Go encoding: %v\n%s", d.EventType(), err, b)
		}
		back, err := events.Decode(b)
		if err != nil {
			t.Errorf("%s: Decode: %v", d.EventType(), err)
		} else if !reflect.DeepEqual(back.Payload, d) {
			t.Errorf("%s: round trip changed the payload:\n got %#v\nwant %#v", d.EventType(), back.Payload, d)
		}
		seen[d.EventType()] = true
	}
	for _, typ := range events.Types {
		if !seen[typ] {
			t.Errorf("no sample for %s", typ)
		}
	}
}

// TestSchemaFieldsMatchGoFields checks, by reflection, that each data schema lists exactly the
// Go type's JSON fields, and requires exactly the fields the Go type always encodes.
func TestSchemaFieldsMatchGoFields(t *testing.T) {
	byType := map[string]events.Data{}
	for _, d := range samples() {
		byType[d.EventType()] = d
	}
	for _, typ := range events.Types {
		var doc struct {
			Properties map[string]json.RawMessage `json:"properties"`
			Required   []string                   `json:"required"`
		}
		b, err := os.ReadFile(filepath.Join(schemaDir, strings.TrimPrefix(typ, "tally.")+".json"))
		if err != nil {
			t.Errorf("%s: %v", typ, err)
			continue
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		var props, goFields, goRequired []string
		for p := range doc.Properties {
			props = append(props, p)
		}
		rt := reflect.TypeOf(byType[typ])
		for i := 0; i < rt.NumField(); i++ {
			name, opts, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			goFields = append(goFields, name)
			if !strings.Contains(opts, "omitempty") {
				goRequired = append(goRequired, name)
			}
		}
		sort.Strings(props)
		sort.Strings(goFields)
		sort.Strings(goRequired)
		sort.Strings(doc.Required)
		if !reflect.DeepEqual(props, goFields) {
			t.Errorf("%s: schema properties %v != Go fields %v", typ, props, goFields)
		}
		if !reflect.DeepEqual(doc.Required, goRequired) {
			t.Errorf("%s: schema required %v != Go always-encoded fields %v", typ, doc.Required, goRequired)
		}
	}
	var env struct {
		Properties struct {
			Type struct {
				Enum []string `json:"enum"`
			} `json:"type"`
		} `json:"properties"`
	}
	b, _ := os.ReadFile(filepath.Join(schemaDir, "envelope.json"))
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatal(err)
	}
	want := append([]string(nil), events.Types...)
	sort.Strings(want)
	sort.Strings(env.Properties.Type.Enum)
	if !reflect.DeepEqual(env.Properties.Type.Enum, want) {
		t.Errorf("envelope type enum %v != events.Types %v", env.Properties.Type.Enum, want)
	}
}

// TestExamples: schemas/events/examples/valid is accepted and examples/invalid rejected, by
// both the JSON Schema and Decode/Validate.
func TestExamples(t *testing.T) {
	s := compileEnvelope(t)
	for _, kind := range []string{"valid", "invalid"} {
		files, _ := filepath.Glob(filepath.Join(schemaDir, "examples", kind, "*.json"))
		if len(files) == 0 {
			t.Fatalf("no %s examples", kind)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			schemaErr := schemaValidate(s, b)
			_, goErr := events.Decode(b)
			if kind == "valid" {
				if schemaErr != nil || goErr != nil {
					t.Errorf("%s: want accepted; schema: %v; Go: %v", f, schemaErr, goErr)
				}
			} else if schemaErr == nil || goErr == nil {
				t.Errorf("%s: want rejected by both; schema: %v; Go: %v", f, schemaErr, goErr)
			}
		}
	}
}

// TestIDPatternMatchesCheckID: every identifier pattern in the schemas gives the same answer
// as events.CheckID for every Unicode code point (inside an id, and as the whole id), through
// the same JSON Schema validator, so that neither side accepts an id the other refuses (a
// bidi override or a zero-width space, say).
func TestIDPatternMatchesCheckID(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(schemaDir, "*.json"))
	patterns := map[string]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if p, ok := x["pattern"].(string); ok && strings.Contains(p, "[^.") { // not the UUID one
				patterns[p] = true
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		walk(doc)
	}
	// One pattern for required ids (+) and one for optional ones (*), the same class.
	if len(patterns) != 2 {
		t.Fatalf("want the required and the optional id pattern, got %d: %v", len(patterns), patterns)
	}
	for p := range patterns {
		if strings.HasPrefix(p, "^(") { // the optional one: the same class
			continue
		}
		c := jsonschema.NewCompiler()
		if err := c.AddResource("id.json", map[string]any{"type": "string", "pattern": p, "maxLength": events.MaxIDChars}); err != nil {
			t.Fatal(err)
		}
		s, err := c.Compile("id.json")
		if err != nil {
			t.Fatal(err)
		}
		bad := 0
		for r := rune(0); r <= 0x10FFFF && bad < 10; r++ {
			if r >= 0xD800 && r <= 0xDFFF {
				continue // not a scalar value: JSON text cannot carry it as a string
			}
			for _, id := range []string{string(r), "a" + string(r) + "b"} {
				schemaOK := s.Validate(id) == nil
				goOK := events.CheckID("id", id) == nil
				if schemaOK != goOK {
					t.Errorf("U+%04X in %q: schema accepts %v, CheckID accepts %v", r, id, schemaOK, goOK)
					bad++
				}
			}
		}
	}
	// Ids that print alike or hide characters: invalid UTF-8, a lone surrogate (decoded to U+FFFD), a tag
	// character, a variation selector, a Hangul filler, "." and "..", and a length over the
	// bound counted in characters as the schemas count it.
	for _, id := range []string{"acct-1\u202e", "acct\u200b1", "\ufeffacct", "acct\u00ad1", "acct\u2066x\u2069",
		"acct\xff", "acct\xed\xa0\x80", "acct\ufffd", "acct\U000E0041", "acct\ufe0f", "acct\u3164", ".", "..", ".acct",
		"acct\ue000", "acct\U0001FFFE", strings.Repeat("é", events.MaxIDChars+1)} {
		if events.CheckID("account_id", id) == nil {
			t.Errorf("CheckID accepts %q", id)
		}
	}
	for _, id := range []string{"acct-1", "café", "用户-1", "acct_😀", "a.b", "a..", strings.Repeat("é", events.MaxIDChars)} {
		if err := events.CheckID("account_id", id); err != nil {
			t.Errorf("CheckID refuses %q: %v", id, err)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestSchemaNestedFieldsMatchGoFields extends TestSchemaFieldsMatchGoFields to every nested
// object: for each struct-typed field (directly, through a pointer or as the elements of a
// slice), the schema's object at that property (or its "items") lists exactly the Go
// struct's JSON fields, requires exactly the ones without omitempty, and forbids others
// ("additionalProperties": false, as Decode refuses unknown fields). It is a check, not
// generation: a field added to a Go type and not to its schema (or the reverse) fails it.
func TestSchemaNestedFieldsMatchGoFields(t *testing.T) {
	for _, typ := range events.Types {
		b, err := os.ReadFile(filepath.Join(schemaDir, strings.TrimPrefix(typ, "tally.")+".json"))
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		var d events.Data
		for _, s := range samples() {
			if s.EventType() == typ {
				d = s
			}
		}
		if d == nil {
			t.Fatalf("%s: no sample", typ)
		}
		for _, p := range compareSchemaObject(typ, reflect.TypeOf(d), doc) {
			t.Error(p)
		}
	}
}

// compareSchemaObject compares the Go struct type rt with the schema object node at path and
// returns every difference, recursing into struct-typed fields.
func compareSchemaObject(path string, rt reflect.Type, node map[string]any) []string {
	var problems []string
	props, _ := node["properties"].(map[string]any)
	if node["additionalProperties"] != false {
		problems = append(problems, fmt.Sprintf("%s: schema object does not set additionalProperties: false", path))
	}
	var schemaReq []string
	if req, ok := node["required"].([]any); ok {
		for _, r := range req {
			schemaReq = append(schemaReq, r.(string))
		}
	}
	var goFields, goReq, schemaFields []string
	for p := range props {
		schemaFields = append(schemaFields, p)
	}
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		goFields = append(goFields, name)
		if !strings.Contains(opts, "omitempty") {
			goReq = append(goReq, name)
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		child, _ := props[name].(map[string]any)
		if ft.Kind() != reflect.Struct || ft == reflect.TypeOf(time.Time{}) || child == nil {
			continue
		}
		for child["type"] == "array" || child["items"] != nil {
			child, _ = child["items"].(map[string]any)
		}
		if child == nil || child["properties"] == nil {
			problems = append(problems, fmt.Sprintf("%s.%s: Go struct %s, schema has no object with properties", path, name, ft))
			continue
		}
		problems = append(problems, compareSchemaObject(path+"."+name, ft, child)...)
	}
	for _, l := range [][]string{goFields, goReq, schemaFields, schemaReq} {
		sort.Strings(l)
	}
	if !slices.Equal(goFields, schemaFields) {
		problems = append(problems, fmt.Sprintf("%s: schema properties %v != Go fields %v", path, schemaFields, goFields))
	}
	if !slices.Equal(goReq, schemaReq) {
		problems = append(problems, fmt.Sprintf("%s: schema required %v != Go always-encoded fields %v", path, schemaReq, goReq))
	}
	return problems
}
