package codecgen

import (
	"fmt"
	"strconv"
	"strings"
)

// validators writes validateTags for every payload type (a type with an EventType method) and
// the struct types they hold: the checks the schema tags and the field types state, the same
// as the JSON Schemas (schemagen) state them. A payload's Validate calls it and adds the rules
// across fields, which stay hand-written.
//
//	id                   checkID ("" is "required"); checkOptID when omitempty or a pointer
//	optid                checkOptID
//	amount, signed, balance, min=, max=   checkRange (balance and min=0 alone: checkBalance,
//	                     "is negative"); an omitempty field whose range excludes 0 may be 0
//	signed,nonzero       "must be non-zero and within ±MaxAmountMicros"
//	enum=a|b|c           "want a, b or c, got %q" (more than 4 values: "unknown %q"); an
//	                     empty alternative, or omitempty, allows ""
//	minLength=1          "required"; maxLength=N: "at most N characters"
//	maxItems, maxProperties   "at most N entries"; items.min/items.max: each element's range
//	keyMaxLength, valueMaxLength  each key's and value's length in characters
//	time.Time            CheckTime; a struct: its validateTags, prefixed with the field's name
//	                     (a slice's elements with name[i])
func (e *emitter) validators() {
	for _, t := range e.reach(func(t *structType) bool { return t.eventType != "" }) {
		e.f("// validateTags checks what the struct tags and field types of %s state (its schema):\n", t.name)
		e.f("// each field on its own. Validate adds the rules across fields.\n")
		e.f("func (e *%s) validateTags() error {\n\tvar errs []error\n", t.name)
		for _, f := range t.fields {
			e.validateField(t, f)
		}
		e.f("\treturn errors.Join(errs...)\n}\n\n")
	}
}

// bound is a tag's number or constant as Go source: "MaxInt64" is math.MaxInt64.
func bound(s string) string {
	if s == "MaxInt64" {
		return "math.MaxInt64"
	}
	return s
}

func (e *emitter) validateField(t *structType, f field) {
	name := f.jsonName
	v := "e." + f.goName
	if f.ptr {
		v = "*e." + f.goName
	}
	items := map[string]string{}
	for _, it := range f.schema {
		items[it[0]] = it[1]
	}
	var out []string // statements
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	check := func(call string) { add("errs = appendErr(errs, %s)", call) }

	switch f.kind {
	case kString:
		_, id := items["id"]
		_, optid := items["optid"]
		switch {
		case id && !f.omitempty && !f.ptr:
			check(fmt.Sprintf("checkID(%q, %s)", name, v))
		case id || optid:
			check(fmt.Sprintf("checkOptID(%q, %s)", name, v))
		}
		if en, ok := items["enum"]; ok {
			e.enum(&out, name, v, en, f.omitempty)
		}
		if n, ok := items["minLength"]; ok {
			if n == "1" {
				add("if %s == \"\" {\n\terrs = append(errs, errors.New(%q))\n}", v, name+": required")
			} else {
				add("if utf8.RuneCountInString(%s) < %s {\n\terrs = append(errs, fmt.Errorf(\"%s: at least %%d characters\", %[2]s))\n}", v, bound(n), name)
			}
		}
		if n, ok := items["maxLength"]; ok {
			add("if len(%s) > 4*%s || utf8.RuneCountInString(%[1]s) > %[2]s {\n\terrs = append(errs, fmt.Errorf(\"%s: at most %%d characters\", %[2]s))\n}", v, bound(n), name)
		}
	case kInt64, kInt32:
		e.intRange(&out, name, v, f, items)
	case kFloat64:
		lo, hi := items["min"], items["max"]
		if lo != "" && hi != "" {
			add("if %[1]s != %[1]s || %[1]s < %[2]s || %[1]s > %[3]s {\n\terrs = append(errs, errors.New(%[4]q))\n}", v, bound(lo), bound(hi),
				fmt.Sprintf("%s: out of range [%s, %s]", name, lo, hi))
		}
	case kTime:
		check(fmt.Sprintf("CheckTime(%q, %s)", name, v))
	case kStruct:
		if _, ok := e.p.types[f.typeName]; !ok {
			if len(f.schema) > 0 {
				e.fail("%s.%s: schema tag on a field of type %s", t.name, f.goName, typeString(f))
			}
			break
		}
		check(fmt.Sprintf("prefix(%q, e.%s.validateTags())", name, f.goName)) // a pointer receiver
	case kSlice:
		if n, ok := items["maxItems"]; ok {
			add("if len(%s) > %s {\n\terrs = append(errs, fmt.Errorf(\"%s: at most %%d entries\", %[2]s))\n}", v, bound(n), name)
		}
		if _, ok := e.p.types[f.typeName]; ok {
			elems := v
			if f.ptr {
				elems = "(" + v + ")"
			}
			add("for i := range %s {\n\tif err := %[1]s[i].validateTags(); err != nil {\n\t\terrs = append(errs, fmt.Errorf(\"%s[%%d]: %%w\", i, err))\n\t}\n}", elems, name)
		}
		lo, hi := items["items.min"], items["items.max"]
		if lo != "" || hi != "" {
			if lo == "" || hi == "" {
				e.fail("%s.%s: items.min and items.max go together", t.name, f.goName)
			}
			add("for i, x := range %s {\n\tif x < %s || x > %s {\n\t\terrs = append(errs, fmt.Errorf(\"%s[%%d]: %%d out of range [%%d, %%d]\", i, x, %[2]s, %[3]s))\n\t}\n}", v, bound(lo), bound(hi), name)
		}
	case kMap:
		if n, ok := items["maxProperties"]; ok {
			add("if len(%s) > %s {\n\terrs = append(errs, fmt.Errorf(\"%s: at most %%d entries\", %[2]s))\n}", v, bound(n), name)
		}
		kn, vn := items["keyMaxLength"], items["valueMaxLength"]
		if kn != "" || vn != "" {
			var body []string
			if kn != "" {
				body = append(body, fmt.Sprintf("if len(k) > 4*%s || utf8.RuneCountInString(k) > %[1]s {\n\terrs = append(errs, fmt.Errorf(\"%s: key %%q longer than %%d characters\", k, %[1]s))\n}", bound(kn), name))
			}
			if vn != "" {
				body = append(body, fmt.Sprintf("if len(v) > 4*%s || utf8.RuneCountInString(v) > %[1]s {\n\terrs = append(errs, fmt.Errorf(\"%s %%q: value longer than %%d characters\", k, %[1]s))\n}", bound(vn), name))
			}
			kv := "k, v"
			if vn == "" {
				kv = "k"
			}
			add("for %s := range %s {\n%s\n}", kv, v, indent(strings.Join(body, "\n")))
		}
	}
	for _, it := range f.schema {
		switch it[0] {
		case "id", "optid", "enum", "minLength", "maxLength", "amount", "signed", "balance", "nonzero", "min", "max",
			"maxItems", "items.min", "items.max", "maxProperties", "keyMaxLength", "valueMaxLength":
		default:
			e.fail("%s.%s: unknown schema tag item %q", t.name, f.goName, it[0])
		}
	}
	if len(out) == 0 {
		return
	}
	body := strings.Join(out, "\n")
	if f.ptr {
		body = fmt.Sprintf("if e.%s != nil {\n%s\n}", f.goName, indent(body))
	}
	e.f("%s\n", indent(body))
}

// enum writes the check of a string enum.
func (e *emitter) enum(out *[]string, name, v, list string, omitempty bool) {
	values := strings.Split(list, "|")
	var named, cases []string
	empty := omitempty
	for _, x := range values {
		if x == "" {
			empty = true
			continue
		}
		named = append(named, x)
	}
	for _, x := range named {
		cases = append(cases, strconv.Quote(x))
	}
	if empty {
		cases = append(cases, `""`)
	}
	var msg string
	switch n := len(named); {
	case n > 4:
		msg = name + ": unknown %q"
	case n == 1:
		msg = name + ": want " + named[0] + ", got %q"
	default:
		msg = name + ": want " + strings.Join(named[:n-1], ", ") + " or " + named[n-1] + ", got %q"
	}
	*out = append(*out, fmt.Sprintf("switch %s {\ncase %s:\ndefault:\n\terrs = append(errs, fmt.Errorf(%q, %[1]s))\n}", v, strings.Join(cases, ", "), msg))
}

// intRange writes the range check of an integer.
func (e *emitter) intRange(out *[]string, name, v string, f field, items map[string]string) {
	_, amount := items["amount"]
	_, signed := items["signed"]
	_, balance := items["balance"]
	_, nonzero := items["nonzero"]
	lo, hi := "", ""
	switch {
	case amount:
		lo, hi = "0", "MaxAmountMicros"
	case signed:
		lo, hi = "-MaxAmountMicros", "MaxAmountMicros"
	case balance:
		lo = "0"
	}
	if m, ok := items["min"]; ok {
		lo = bound(m)
	}
	if m, ok := items["max"]; ok {
		hi = bound(m)
	}
	val := v
	if f.kind == kInt32 {
		val = "int64(" + v + ")"
	}
	var stmt string
	switch {
	case signed && nonzero && lo == "-MaxAmountMicros" && hi == "MaxAmountMicros":
		stmt = fmt.Sprintf("if %s == 0 || %[1]s < -MaxAmountMicros || %[1]s > MaxAmountMicros {\n\terrs = append(errs, fmt.Errorf(\"%s: %%d must be non-zero and within ±%%d\", %[1]s, MaxAmountMicros))\n}", v, name)
		nonzero = false
	case lo != "" && hi != "":
		stmt = fmt.Sprintf("errs = appendErr(errs, checkRange(%q, %s, %s, %s))", name, val, lo, hi)
	case lo == "0":
		stmt = fmt.Sprintf("errs = appendErr(errs, checkBalance(%q, %s))", name, val)
	case lo != "":
		stmt = fmt.Sprintf("if %s < %s {\n\terrs = append(errs, fmt.Errorf(\"%s: %%d is below %%d\", %[1]s, %[2]s))\n}", v, lo, name)
	case hi != "":
		stmt = fmt.Sprintf("if %s > %s {\n\terrs = append(errs, fmt.Errorf(\"%s: %%d is above %%d\", %[1]s, %[2]s))\n}", v, hi, name)
	}
	if nonzero {
		*out = append(*out, fmt.Sprintf("if %s == 0 {\n\terrs = append(errs, errors.New(%q))\n}", v, name+": must be non-zero"))
	}
	if stmt == "" {
		return
	}
	// An omitempty field whose range excludes 0 may be 0 (absent).
	if n, err := strconv.ParseInt(lo, 10, 64); f.omitempty && err == nil && n > 0 {
		stmt = fmt.Sprintf("if %s != 0 {\n%s\n}", v, indent(stmt))
	}
	*out = append(*out, stmt)
}

func indent(s string) string { return "\t" + strings.ReplaceAll(s, "\n", "\n\t") }
