// Command codecgen writes codec_gen.go (the Decoder's per-type parsers and the hot payload
// appenders) from the Go types of shared/events. Run by go generate in shared/events and by
// make generate:
//
//	go run ./internal/codecgen/cmd/codecgen -dir .
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tallyhq/tally/shared/events/internal/codecgen"
)

func main() {
	dir := flag.String("dir", ".", "the directory of package events")
	flag.Parse()
	src, err := codecgen.Generate(*dir)
	if err == nil {
		err = os.WriteFile(filepath.Join(*dir, codecgen.OutputFile), src, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "codecgen:", err)
		os.Exit(1)
	}
}
