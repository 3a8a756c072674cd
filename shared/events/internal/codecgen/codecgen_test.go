package codecgen

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// generateSrc runs Generate on a package made of src.
func generateSrc(t *testing.T, src string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "types.go"), []byte("package events\n\nimport \"time\"\n\n"+src), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := Generate(dir)
	return string(out), err
}

const sampleSrc = `
const TypeSample = "tally.sample.v1"

//codec:decode
//codec:append
type Sample struct {
	ID      string    ` + "`" + `json:"id" schema:"id"` + "`" + `
	Account string    ` + "`" + `json:"account_id" codec:"subject"` + "`" + `
	Tier    string    ` + "`" + `json:"tier,omitempty" schema:"enum=a|b" codec:"intern"` + "`" + `
	N       int64     ` + "`" + `json:"n,omitempty"` + "`" + `
	At      time.Time ` + "`" + `json:"at"` + "`" + `
	Inner   Inner     ` + "`" + `json:"inner"` + "`" + `
}

func (Sample) EventType() string { return TypeSample }

type Inner struct {
	A int64  ` + "`" + `json:"a,omitempty"` + "`" + `
	B string ` + "`" + `json:"b" schema:"maxLength=MaxB"` + "`" + `
}
`

// TestGenerateFromTags: each field of a marked type is parsed and appended by its json and
// codec tags, and one more field in the type is one more case and one more append.
func TestGenerateFromTags(t *testing.T) {
	out, err := generateSrc(t, sampleSrc)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"inTier = envelopeSlots + iota", "case TypeSample:\n\t\treturn TypeSample, true",
		`case "account_id":` + "\n\t\t\tbit, ok = 1<<1, accountStr(s, subject, &p.Account)",
		`case "tier":` + "\n\t\t\tbit, ok = 1<<2, d.internStr(s, inTier, &p.Tier)",
		`case "inner":` + "\n\t\t\tbit, ok = 1<<5, d.decodeInner(s, subject, &p.Inner)",
		"return seen&0x33 == 0x33", // id, account_id, at, inner: required
		"if !plainTime(p.At) {", "return AppendSample(dst, &p), true",
		"dst = AppendKeyString(dst, `{\"id\":`, p.ID)", "if p.Tier != \"\" {",
		"dst = AppendTime(append(dst, `,\"at\":`...), p.At)",
		"dst = appendInner(append(dst, `,\"inner\":`...), &p.Inner)",
		"dst = append(dst, '{')\n\tn := len(dst)", "dst = AppendKeyString(comma(dst, n), `\"b\":`, p.B)",
		"func (e *Sample) validateTags() error", `errs = appendErr(errs, checkID("id", e.ID))`,
		"case \"a\", \"b\", \"\":", `fmt.Errorf("tier: want a or b, got %q", e.Tier)`,
		`errs = appendErr(errs, CheckTime("at", e.At))`, `errs = appendErr(errs, prefix("inner", e.Inner.validateTags()))`,
		"if len(e.B) > 4*MaxB || utf8.RuneCountInString(e.B) > MaxB {",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("generated code lacks %q:\n%s", want, out)
		}
	}
	more, err := generateSrc(t, strings.Replace(sampleSrc, "\tInner   Inner", "\tRegion string `json:\"region,omitempty\"`\n\tInner   Inner", 1))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`case "region":` + "\n\t\t\tbit, ok = 1<<5, plainStr(s, &p.Region)", "dst = AppendKeyString(dst, `,\"region\":`, p.Region)"} {
		if !strings.Contains(more, want) {
			t.Errorf("a new field: generated code lacks %q", want)
		}
	}
}

// TestGenerateRefuses: what the generated code could not do right is an error, not skipped.
func TestGenerateRefuses(t *testing.T) {
	for _, c := range []struct{ name, from, to, err string }{
		{"unknown codec item", `codec:"intern"`, `codec:"internn"`, `unknown item "internn"`},
		{"codec tag on an int", "`json:\"n,omitempty\"`", "`json:\"n,omitempty\" codec:\"intern\"`", "not a string"},
		{"intern and subject", `codec:"subject"`, `codec:"subject,intern"`, "exclude each other"},
		{"unknown schema item", `schema:"id"`, `schema:"idd"`, `unknown schema tag item "idd"`},
		{"unknown directive", "//codec:append", "//codec:apend", "unknown directive"},
		{"fields without append", "//codec:append", "//codec:fields", "without //codec:append"},
		{"decode a type it cannot parse", "N       int64 ", "N       int32 ", "does not parse a field of type int32"},
		{"append a map", "N       int64 ", "N       map[string]string ", "field of type map[string]string"},
		{"decode without EventType", "func (Sample) EventType() string { return TypeSample }", "", "without an EventType method"},
	} {
		src := strings.Replace(sampleSrc, c.from, c.to, 1)
		if src == sampleSrc {
			t.Fatalf("%s: the replacement did not apply", c.name)
		}
		if _, err := generateSrc(t, src); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: err %v, want one containing %q", c.name, err, c.err)
		}
	}
}
