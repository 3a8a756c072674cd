package events_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/tallyhq/tally/shared/events/internal/schemagen"
)

// TestSchemasAreGenerated: every payload schema in schemas/events is exactly what the
// generator writes from the Go types (run go generate ./... in shared/events, or make
// generate, after changing a payload type), and no payload schema exists without a type.
func TestSchemasAreGenerated(t *testing.T) {
	files, err := schemagen.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(schemaDir, name))
		if err != nil {
			t.Errorf("%s: %v (run go generate ./... in shared/events)", name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what schemagen writes from the Go types: run go generate ./... in shared/events (or make generate)", name)
		}
	}
	committed, _ := filepath.Glob(filepath.Join(schemaDir, "*.v1.json"))
	for _, f := range committed {
		if _, ok := files[filepath.Base(f)]; !ok {
			t.Errorf("%s: a payload schema without a Go type in shared/events", f)
		}
	}
	if len(files) != len(committed) {
		t.Errorf("generated %d payload schemas, %d committed", len(files), len(committed))
	}
}
