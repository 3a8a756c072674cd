package events_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/tallyhq/tally/shared/events/internal/codecgen"
)

// TestCodecIsGenerated: codec_gen.go (the Decoder's parsers and the payload appenders of the
// hot types) is exactly what codecgen writes from the Go types: run go generate ./... in
// shared/events (or make generate) after changing a payload type.
func TestCodecIsGenerated(t *testing.T) {
	want, err := codecgen.Generate(".")
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(codecgen.OutputFile)
	if err != nil {
		t.Fatalf("%v (run go generate ./... in shared/events)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what codecgen writes from the Go types: run go generate ./... in shared/events (or make generate)", codecgen.OutputFile)
	}
}
