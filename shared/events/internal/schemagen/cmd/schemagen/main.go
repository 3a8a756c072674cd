// Command schemagen writes the event payload schemas (schemas/events/*.v1.json) from the Go
// types of shared/events. Run by go generate in shared/events and by make generate:
//
//	go run ./internal/schemagen/cmd/schemagen -dir ../../schemas/events
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tallyhq/tally/shared/events/internal/schemagen"
)

func main() {
	dir := flag.String("dir", "../../schemas/events", "the directory of the schema files")
	flag.Parse()
	files, err := schemagen.Generate()
	if err != nil {
		fmt.Fprintln(os.Stderr, "schemagen:", err)
		os.Exit(1)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(*dir, name), b, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "schemagen:", err)
			os.Exit(1)
		}
	}
}
