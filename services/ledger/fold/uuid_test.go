package fold

import "testing"

func TestParseUUID(t *testing.T) {
	const s = "01a211a1-e5b0-78f5-bfff-ede27dab8a44"
	u := ParseUUID(s)
	if u.String() != s {
		t.Fatalf("ParseUUID(%s).String() = %s", s, u)
	}
	if ParseUUID("01A211A1-E5B0-78F5-BFFF-EDE27DAB8A44") != u {
		t.Fatal("upper-case form parses to another UUID")
	}
	for _, bad := range []string{"", "x", "01a211a1e5b078f5bfffede27dab8a44", "{01a211a1-e5b0-78f5-bfff-ede27dab8a44}",
		"urn:uuid:01a211a1-e5b0-78f5-bfff-ede27dab8a44", "01a211a1-e5b0-78f5-bfff-ede27dab8a4g", "01a211a1xe5b0-78f5-bfff-ede27dab8a44"} {
		if ParseUUID(bad) != (UUID{}) {
			t.Errorf("ParseUUID(%q) is not the zero UUID", bad)
		}
	}
	if a := testing.AllocsPerRun(100, func() { ParseUUID(s) }); a != 0 {
		t.Fatalf("ParseUUID allocates %v times per call", a)
	}
}

func BenchmarkParseUUID(b *testing.B) {
	const s = "01a211a1-e5b0-78f5-bfff-ede27dab8a44"
	b.ReportAllocs()
	for b.Loop() {
		ParseUUID(s)
	}
}
