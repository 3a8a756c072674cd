package settings

import (
	"os"
	"strings"
	"testing"
)

// TestREADMEDocumentsEverySetting fails when a Config gains a setting the README's table
// does not list with its default (run `go run ./internal/settings/gen` to print the table).
func TestREADMEDocumentsEverySetting(t *testing.T) {
	b, err := os.ReadFile("../../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	all := All()
	if len(all) < 30 {
		t.Fatalf("only %d settings found: the reflection walk is broken", len(all))
	}
	for _, s := range all {
		def := s.Default
		if def == "" {
			def = `""`
		}
		row := "| `" + s.Name + "` | " + s.Service + " | `" + def + "` |"
		if !strings.Contains(readme, row) {
			t.Errorf("README.md lacks the row %q", row)
		}
	}
}
