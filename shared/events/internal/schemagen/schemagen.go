// Package schemagen writes the JSON Schemas of the event payloads (schemas/events/*.v1.json)
// from the Go types in shared/events, which are the source of truth: a property per json tag
// (omitempty = optional, every other field required), its JSON type from the Go type, and its
// constraints from two struct tags:
//
//	schema:"..."  a comma-separated list of
//	    id               an identifier: the id pattern, maxLength MaxIDChars, and minLength 1
//	                     unless the field is omitempty (then "" is allowed)
//	    optid            an identifier that may be "" although the field is required
//	    amount           an integer in [0, MaxAmountMicros]
//	    signed           an integer in [-MaxAmountMicros, MaxAmountMicros]
//	    balance          an integer in [0, MaxInt64] (a sum of amounts)
//	    nonzero          not 0
//	    enum=a|b|c       one of the strings ("" is spelled by an empty alternative: a|b|)
//	    min=N, max=N     minimum, maximum (N a number or one of the constants in consts)
//	    minLength=N, maxLength=N, maxItems=N, maxProperties=N
//	    items.min=N, items.max=N          the bounds of a slice's integer elements
//	    keyMaxLength=N, valueMaxLength=N  the bounds of a map[string]string's keys and values
//	doc:"..."     the property's description
//
// A time.Time is a date-time string whose year is in [1970, 2200) (events.CheckTime's
// bounds); a struct is a closed object; a pointer is its element (optional by omitempty).
// What a field tag cannot say (a payload's description, and rules across fields such as
// request.started's funding) is in the tables payloadDoc and payloadAllOf below.
package schemagen

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// idClass is the set of characters an identifier may not hold, as a regular-expression
// character class body (the same as events.CheckID; TestIDPatternMatchesCheckID holds the
// schemas' pattern to it for every code point). An id may also not start with '.'.
const idClass = "\u0000-\u0020\u007f-\u00a0\u00ad\u034f\u061c\u115f-\u1160\u1680\u17b4-\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\u3164\ue000-\uf8ff\ufdd0-\ufdef\ufe00-\ufe0f\ufeff\uffa0\ufff0-\uffff\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U0001fffe-\U0001ffff\U0002fffe-\U0002ffff\U0003fffe-\U0003ffff\U0004fffe-\U0004ffff\U0005fffe-\U0005ffff\U0006fffe-\U0006ffff\U0007fffe-\U0007ffff\U0008fffe-\U0008ffff\U0009fffe-\U0009ffff\U000afffe-\U000affff\U000bfffe-\U000bffff\U000cfffe-\U000cffff\U000dfffe-\U000dffff\U000e0000-\U000e0fff\U000efffe-\U000effff\U000f0000-\U0010ffff"

// IDPattern is the pattern of a required identifier, OptIDPattern of one that may be "".
const (
	IDPattern    = "^[^." + idClass + "][^" + idClass + "]*$"
	OptIDPattern = "^([^." + idClass + "][^" + idClass + "]*)?$"
)

// YearPattern bounds a date-time's year to [1970, 2200), as events.CheckTime does.
const YearPattern = "^(19[7-9][0-9]|2[01][0-9][0-9])-"

// consts are the named bounds a tag may use instead of a number.
var consts = map[string]int64{
	"MaxIDChars":          events.MaxIDChars,
	"MaxReasonChars":      events.MaxReasonChars,
	"MaxAmountMicros":     events.MaxAmountMicros,
	"MaxUnit":             events.MaxUnit,
	"MaxGrantPriority":    events.MaxGrantPriority,
	"MaxFactorPermille":   events.MaxFactorPermille,
	"MaxExpiringGrants":   events.MaxExpiringGrants,
	"MaxNotifyThresholds": events.MaxNotifyThresholds,
	"MaxProjectBudgets":   events.MaxProjectBudgets,
	"MaxNotifyPermille":   events.MaxNotifyPermille,
	"MaxInt64":            math.MaxInt64,
}

// payloadDoc is each payload schema's description.
var payloadDoc = map[string]string{
	events.TypeRequestStarted:      "An admitted request and what funds it: the tier's included allowance (allowance_micros) and a credit hold (hold_micros); funding is allowance (no hold), credits (no allowance) or split (both above 0).",
	events.TypeRequestRejected:     "A denied request and the reason.",
	events.TypeRequestFinished:     "The actual usage of a request and its price under the named price-book version; allowance_micros + credits_micros + overage_micros is cost_micros, or all are absent (older producers).",
	events.TypeRequestExpired:      "A hold the ledger released because no finish came before hold_expires_at (log time): hold_micros of credits back to the grants they came from, allowance_micros back to the windows; released_micros is their sum.",
	events.TypeCreditsGranted:      "Credits added by a purchase, subscription refill or promotion, with an optional expiry.",
	events.TypeCreditsAdjusted:     "A signed finance correction with a reason.",
	events.TypeAccountUpdated:      "An account's tier, default priority class and suspension (all three as given), and the organization, notification and auto-top-up settings it carries (an absent setting is unchanged).",
	events.TypeBalanceUpdated:      "The ledger's view of one account; partition/offset is the events-topic position of the last event folded for it.",
	events.TypeLimitsAdjusted:      "A dynamic limit factor in permille (1000 = x1.0): load per endpoint and priority class, or history per account (0 = blocked).",
	events.TypeLedgerEntry:         "One line of a balanced double-entry transaction; the lines of a transaction_id sum to zero.",
	events.TypeAbuseFlagged:        "A detector's finding.",
	events.TypeClockTick:           "Published by the ledger into an events-topic partition it owns that has been idle for LEDGER_TICK_INTERVAL_MS: folding it advances the partition's log time (watermark) to the event time, so expired grants and holds are swept without customer traffic. The subject is empty; consumers other than the ledger fold skip it.",
	events.TypeSubscriptionChanged: "An account subscribes to a plan, changes plan, or cancels (plan_id \"\"). Folded by the ledger: renewals, rollover, upgrades and downgrades are described in the ledger README.",
	events.TypeBudgetChanged:       "A funding account (an organization) sets, changes (budget_micros) or removes (remove) the monthly budget of one project it funds: what the project's finished requests may cost in a UTC calendar month (log time), enforced at admission. It carries no other setting (account.updated sets tier, priority and suspension). At most 64 per funding account: the ledger dead-letters one that would add a 65th (too_many_budgets).",
	events.TypeNotification:        "Published by the ledger on the notifications topic: an account crossed a usage threshold of its period's allocation, or its available balance fell below its floor. At most once per period per threshold; the envelope id is deterministic (receivers dedupe on it).",
	events.TypeTopUpRequested:      "Published by the ledger on the notifications topic: the account's available balance fell below its auto-top-up threshold. Requested once, and again only after the balance was back at or above the threshold; topup_id is deterministic.",
}

// payloadAllOf holds the rules across fields that the Validate methods check and a field tag
// cannot express, as JSON ("ID" in a pattern stands for IDPattern).
var payloadAllOf = map[string]string{
	events.TypeBudgetChanged: `[
	{"if": {"properties": {"remove": {"const": true}}, "required": ["remove"]}, "then": {"properties": {"budget_micros": {"const": 0}}}}]`,
	events.TypeRequestStarted: `[
	{"if": {"properties": {"funding": {"const": "credits"}}}, "then": {"properties": {"allowance_micros": {"const": 0}}}},
	{"if": {"properties": {"funding": {"const": "allowance"}}}, "then": {"properties": {"hold_micros": {"const": 0}}}},
	{"if": {"properties": {"funding": {"const": "split"}}}, "then": {"properties": {"hold_micros": {"minimum": 1}, "allowance_micros": {"minimum": 1}}}}]`,
	events.TypeLimitsAdjusted: `[
	{"if": {"properties": {"scope": {"const": "endpoint"}}}, "then": {"required": ["endpoint", "priority"], "properties": {"endpoint": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "ID"}, "account_id": {"const": ""}}}},
	{"if": {"properties": {"scope": {"const": "account"}}}, "then": {"required": ["account_id"], "properties": {"account_id": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "ID"}, "endpoint": {"const": ""}, "priority": false}}}]`,
}

// FileName is the schema file of an event type: "tally.request.started.v1" -> "request.started.v1.json".
func FileName(typ string) string { return strings.TrimPrefix(typ, "tally.") + ".json" }

// Generate returns every payload schema, by file name.
func Generate() (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, typ := range events.Types {
		rt, ok := payloadTypes[typ]
		if !ok {
			return nil, fmt.Errorf("%s: no Go type", typ)
		}
		s, err := payload(typ, rt)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", typ, err)
		}
		var b bytes.Buffer
		write(&b, s, "")
		b.WriteByte('\n')
		out[FileName(typ)] = b.Bytes()
	}
	return out, nil
}

// payloadTypes maps each event type to its Go payload type.
var payloadTypes = func() map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for _, d := range []events.Data{
		events.RequestStarted{}, events.RequestRejected{}, events.RequestFinished{}, events.RequestExpired{},
		events.CreditsGranted{}, events.CreditsAdjusted{}, events.AccountUpdated{}, events.BalanceUpdated{},
		events.LimitsAdjusted{}, events.LedgerEntry{}, events.AbuseFlagged{}, events.ClockTick{},
		events.SubscriptionChanged{}, events.Notification{}, events.TopUpRequested{}, events.BudgetChanged{},
	} {
		m[d.EventType()] = reflect.TypeOf(d)
	}
	return m
}()

// obj is a JSON object that keeps its keys in order.
type obj []kv

type kv struct {
	k string
	v any
}

func (o *obj) set(k string, v any) { *o = append(*o, kv{k, v}) }

// num is a JSON number written as given.
type num string

func payload(typ string, rt reflect.Type) (obj, error) {
	o := obj{}
	o.set("$schema", "https://json-schema.org/draft/2020-12/schema")
	o.set("$id", "https://tally.dev/schemas/events/"+FileName(typ))
	o.set("title", typ+" data")
	body, err := object(rt)
	if err != nil {
		return nil, err
	}
	o = append(o, body...)
	doc, ok := payloadDoc[typ]
	if !ok {
		return nil, fmt.Errorf("no entry in payloadDoc")
	}
	o.set("description", doc)
	if raw, ok := payloadAllOf[typ]; ok {
		id, _ := json.Marshal(IDPattern)
		v, err := parseOrdered(strings.ReplaceAll(raw, `"pattern": "ID"`, `"pattern": `+string(id)))
		if err != nil {
			return nil, fmt.Errorf("payloadAllOf: %w", err)
		}
		o.set("allOf", v)
	}
	return o, nil
}

// object is the schema of a struct: a closed object of its json fields.
func object(rt reflect.Type) (obj, error) {
	o := obj{}
	o.set("type", "object")
	o.set("additionalProperties", false)
	props := obj{}
	var required []any
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" || tag == "" {
			return nil, fmt.Errorf("%s.%s: no json tag", rt.Name(), f.Name)
		}
		name, opts, _ := strings.Cut(tag, ",")
		optional := opts == "omitempty"
		s, err := field(f, optional)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", rt.Name(), f.Name, err)
		}
		props.set(name, s)
		if !optional {
			required = append(required, name)
		}
	}
	o.set("properties", props)
	if len(required) > 0 {
		o.set("required", required)
	}
	return o, nil
}

type tags struct {
	kind  string            // id, optid, amount, signed, balance or ""
	vals  map[string]string // key=value items
	flags map[string]bool   // nonzero
}

var known = map[string]bool{"enum": true, "min": true, "max": true, "minLength": true, "maxLength": true, "maxItems": true,
	"maxProperties": true, "items.min": true, "items.max": true, "keyMaxLength": true, "valueMaxLength": true}

func parseTags(s string) (tags, error) {
	t := tags{vals: map[string]string{}, flags: map[string]bool{}}
	if s == "" {
		return t, nil
	}
	for _, item := range strings.Split(s, ",") {
		k, v, hasV := strings.Cut(item, "=")
		switch {
		case hasV && known[k]:
			if k != "enum" {
				if _, err := number(v); err != nil {
					return t, fmt.Errorf("schema tag %s: %w", k, err)
				}
			}
			t.vals[k] = v
		case !hasV && (k == "id" || k == "optid" || k == "amount" || k == "signed" || k == "balance"):
			if t.kind != "" {
				return t, fmt.Errorf("schema tag: both %s and %s", t.kind, k)
			}
			t.kind = k
		case !hasV && k == "nonzero":
			t.flags[k] = true
		default:
			return t, fmt.Errorf("schema tag: unknown item %q", item)
		}
	}
	return t, nil
}

// number resolves a bound: a JSON number or a name in consts.
func number(v string) (num, error) {
	if c, ok := consts[v]; ok {
		return num(strconv.FormatInt(c, 10)), nil
	}
	if _, err := strconv.ParseFloat(v, 64); err != nil || strings.ContainsAny(v, "xX_") {
		return "", fmt.Errorf("%q is neither a number nor a known constant", v)
	}
	return num(v), nil
}

func (t tags) bound(o *obj, key, tag string) {
	if v, ok := t.vals[tag]; ok {
		n, _ := number(v)
		o.set(key, n)
	}
}

var timeType = reflect.TypeOf(time.Time{})

func field(f reflect.StructField, optional bool) (obj, error) {
	t, err := parseTags(f.Tag.Get("schema"))
	if err != nil {
		return nil, err
	}
	rt := f.Type
	if rt.Kind() == reflect.Pointer {
		rt = rt.Elem()
	}
	o := obj{}
	kindFor := func(allowed ...reflect.Kind) error {
		for _, k := range allowed {
			if rt.Kind() == k {
				return nil
			}
		}
		return fmt.Errorf("schema tag %q does not apply to %s", t.kind, rt)
	}
	switch {
	case rt == timeType:
		o.set("type", "string")
		o.set("format", "date-time")
		o.set("pattern", YearPattern)
	case rt.Kind() == reflect.String:
		if e, ok := t.vals["enum"]; ok {
			var alts []any
			for _, a := range strings.Split(e, "|") {
				alts = append(alts, a)
			}
			o.set("enum", alts)
			break
		}
		o.set("type", "string")
		switch t.kind {
		case "id", "optid":
			if t.kind == "id" && !optional {
				o.set("minLength", num("1"))
			}
			o.set("maxLength", num(strconv.Itoa(events.MaxIDChars)))
			if t.kind == "id" && !optional {
				o.set("pattern", IDPattern)
			} else {
				o.set("pattern", OptIDPattern)
			}
		case "":
			t.bound(&o, "minLength", "minLength")
			t.bound(&o, "maxLength", "maxLength")
		default:
			return nil, kindFor()
		}
	case rt.Kind() == reflect.Bool:
		o.set("type", "boolean")
	case rt.Kind() == reflect.Int64 || rt.Kind() == reflect.Int32:
		o.set("type", "integer")
		lo, hi := t.vals["min"], t.vals["max"]
		switch t.kind {
		case "amount":
			lo, hi = or(lo, "0"), or(hi, "MaxAmountMicros")
		case "signed":
			lo, hi = or(lo, "-"+strconv.FormatInt(events.MaxAmountMicros, 10)), or(hi, "MaxAmountMicros")
		case "balance":
			lo, hi = or(lo, "0"), or(hi, "MaxInt64")
		case "":
		default:
			return nil, kindFor()
		}
		if lo != "" {
			n, _ := number(lo)
			o.set("minimum", n)
		}
		if hi != "" {
			n, _ := number(hi)
			o.set("maximum", n)
		}
	case rt.Kind() == reflect.Float64:
		o.set("type", "number")
		t.bound(&o, "minimum", "min")
		t.bound(&o, "maximum", "max")
	case rt.Kind() == reflect.Struct:
		s, err := object(rt)
		if err != nil {
			return nil, err
		}
		o = s
	case rt.Kind() == reflect.Slice:
		o.set("type", "array")
		t.bound(&o, "maxItems", "maxItems")
		var items obj
		switch el := rt.Elem(); {
		case el.Kind() == reflect.Struct && el != timeType:
			s, err := object(el)
			if err != nil {
				return nil, err
			}
			items = s
		case el.Kind() == reflect.Int32 || el.Kind() == reflect.Int64:
			items.set("type", "integer")
			t.bound(&items, "minimum", "items.min")
			t.bound(&items, "maximum", "items.max")
		default:
			return nil, fmt.Errorf("unsupported slice element %s", el)
		}
		o.set("items", items)
	case rt.Kind() == reflect.Map && rt.Key().Kind() == reflect.String && rt.Elem().Kind() == reflect.String:
		o.set("type", "object")
		t.bound(&o, "maxProperties", "maxProperties")
		if _, ok := t.vals["keyMaxLength"]; ok {
			names := obj{}
			t.bound(&names, "maxLength", "keyMaxLength")
			o.set("propertyNames", names)
		}
		vals := obj{{"type", "string"}}
		t.bound(&vals, "maxLength", "valueMaxLength")
		o.set("additionalProperties", vals)
	default:
		return nil, fmt.Errorf("unsupported Go type %s", rt)
	}
	if d := f.Tag.Get("doc"); d != "" {
		o.set("description", d)
	}
	if t.flags["nonzero"] {
		o.set("not", obj{{"const", num("0")}})
	}
	return o, nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// parseOrdered decodes JSON keeping the order of object keys.
func parseOrdered(s string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var val func() (any, error)
	val = func() (any, error) {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		switch x := tok.(type) {
		case json.Delim:
			if x == '{' {
				o := obj{}
				for dec.More() {
					k, err := dec.Token()
					if err != nil {
						return nil, err
					}
					v, err := val()
					if err != nil {
						return nil, err
					}
					o.set(k.(string), v)
				}
				_, err := dec.Token()
				return o, err
			}
			var a []any
			for dec.More() {
				v, err := val()
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			_, err := dec.Token()
			return a, err
		case json.Number:
			return num(x), nil
		}
		return tok, nil
	}
	return val()
}

// write writes v as indented JSON (two spaces), every character outside printable ASCII
// escaped, so that a schema file shows the invisible characters the id pattern refuses.
func write(b *bytes.Buffer, v any, indent string) {
	in := indent + "  "
	switch x := v.(type) {
	case obj:
		if len(x) == 0 {
			b.WriteString("{}")
			return
		}
		b.WriteString("{\n")
		for i, e := range x {
			b.WriteString(in)
			writeString(b, e.k)
			b.WriteString(": ")
			write(b, e.v, in)
			if i < len(x)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "}")
	case []any:
		if len(x) == 0 {
			b.WriteString("[]")
			return
		}
		b.WriteString("[\n")
		for i, e := range x {
			b.WriteString(in)
			write(b, e, in)
			if i < len(x)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "]")
	case string:
		writeString(b, x)
	case num:
		b.WriteString(string(x))
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case nil:
		b.WriteString("null")
	default:
		panic(fmt.Sprintf("schemagen: cannot write %T", v))
	}
}

func writeString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r >= 0x20 && r < 0x7f:
			b.WriteRune(r)
		case r > 0xFFFF:
			r -= 0x10000
			fmt.Fprintf(b, `\u%04x\u%04x`, 0xD800+(r>>10), 0xDC00+(r&0x3FF))
		default:
			fmt.Fprintf(b, `\u%04x`, r)
		}
	}
	b.WriteByte('"')
}
