// Command gen prints the README's settings table from the services' Config structs: names
// and defaults by reflection (package settings), meanings from the fields' doc comments.
// Run from services/tallyctl: go run ./internal/settings/gen
package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/tallyhq/tally/services/tallyctl/internal/settings"
)

func main() {
	docs := map[string]string{}
	for _, dir := range []string{"../admitter", "../ledger", "../sink", "../../shared/tlsx", "../../shared/httpx"} {
		collect(dir, docs)
	}
	fmt.Println("| variable | service | default | meaning |")
	fmt.Println("|---|---|---|---|")
	for _, s := range settings.All() {
		def := s.Default
		if def == "" {
			def = `""`
		}
		fmt.Printf("| `%s` | %s | `%s` | %s |\n", s.Name, s.Service, def, doc(docs, s.Name))
	}
}

// collect maps env variable names to the doc comment of the field that reads them.
func collect(dir string, docs map[string]string) {
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ParseComments)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return nil
		}
		ast.Inspect(f, func(n ast.Node) bool {
			st, ok := n.(*ast.StructType)
			if !ok {
				return true
			}
			for _, fld := range st.Fields.List {
				if fld.Tag == nil {
					continue
				}
				tag := reflect.StructTag(strings.Trim(fld.Tag.Value, "`"))
				name, _, _ := strings.Cut(tag.Get("env"), ",")
				if name == "" || name == "-" {
					continue
				}
				text := ""
				if fld.Doc != nil {
					text = fld.Doc.Text()
				} else if fld.Comment != nil {
					text = fld.Comment.Text()
				}
				text = strings.Join(strings.Fields(text), " ")
				text = strings.ReplaceAll(text, "|", "\\|")
				if docs[name] == "" {
					docs[name] = text
				}
			}
			return true
		})
		return nil
	})
}

// doc finds a variable's doc comment: by its full name, or, for a field of a struct embedded
// with an envPrefix (tlsx, httpx settings), by the name without its leading prefix segments.
func doc(docs map[string]string, name string) string {
	for n := name; n != ""; {
		if d := docs[n]; d != "" {
			return d
		}
		_, rest, ok := strings.Cut(n, "_")
		if !ok {
			break
		}
		n = rest
	}
	return ""
}
