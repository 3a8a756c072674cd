// Package codecgen writes shared/events/codec_gen.go from the Go types in shared/events, which
// are the source of truth (as for the JSON Schemas, see schemagen): the Decoder's per-type
// parsers and the payload appenders of the hot event types, and every payload type's
// validateTags, the per-field checks its schema tags state (see validators), which its
// Validate calls before the rules across fields. It reads the package's source
// (go/parser, not reflection), so it runs even when the generated file is stale and no longer
// compiles.
//
// A payload type opts in with directive comments above its declaration:
//
//	//codec:decode  the Decoder parses it by hand (Decoder.decodePayload; the type must have an
//	                EventType method): fields of string, int64, time.Time or a struct type
//	//codec:append  AppendT writes its JSON as encoding/json does (AppendData uses it for a
//	                Data): fields of string, int64, int32, bool, time.Time, a struct type or an
//	                omitempty slice of a struct type
//	//codec:fields  also AppendTFields, AppendT from the fields given one by one
//
// The struct types they hold are generated with them (unexported appendT where the type has no
// //codec:append of its own). A field's JSON name and omitempty come from its json tag; the
// codec tag adds, for a string field, a comma-separated list of
//
//	intern   the Decoder keeps the field's last value (one slot per JSON name, shared by the
//	         types) and reuses its string: fields whose values repeat from event to event
//	subject  the Decoder shares the event subject's string when the value equals it
//	bytes    AppendTFields takes the field as T (~string | ~[]byte)
package codecgen

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// OutputFile is the generated file, in the package directory.
const OutputFile = "codec_gen.go"

type kind int

const (
	kOther kind = iota
	kString
	kInt64
	kInt32
	kBool
	kTime
	kStruct
	kSlice // typeName is the element type
	kFloat64
	kMap // map[string]string
)

type field struct {
	goName, jsonName string
	omitempty        bool
	kind             kind
	typeName         string // kStruct, kSlice: the struct type; kOther: the type's source
	intern, subject  bool
	bytes            bool
	ptr              bool        // a pointer to the kind
	schema           [][2]string // the schema tag's items: name, value
}

type structType struct {
	name                     string
	fields                   []field
	decode, append, byFields bool   // the directives
	eventType                string // the constant EventType returns; "" when none
	embeds                   bool   // it has an embedded field (not supported)
}

type pkg struct {
	types map[string]*structType
	order []string // source order (file name, then position)
}

// Generate returns the content of OutputFile for the package in dir.
func Generate(dir string) ([]byte, error) {
	p, err := load(dir)
	if err != nil {
		return nil, err
	}
	src, err := p.generate()
	if err != nil {
		return nil, err
	}
	out, err := format.Source(src)
	if err != nil {
		return nil, fmt.Errorf("codecgen: gofmt: %v\n%s", err, src)
	}
	return out, nil
}

func load(dir string) (*pkg, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	p := &pkg{types: map[string]*structType{}}
	fset := token.NewFileSet()
	eventTypes := map[string]string{}
	for _, name := range names {
		base := filepath.Base(name)
		if strings.HasSuffix(base, "_test.go") || base == OutputFile {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		f, err := parser.ParseFile(fset, name, src, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.GenDecl:
				if d.Tok != token.TYPE {
					continue
				}
				for _, spec := range d.Specs {
					ts := spec.(*ast.TypeSpec)
					st, ok := ts.Type.(*ast.StructType)
					if !ok || ts.TypeParams != nil {
						continue
					}
					doc := ts.Doc
					if doc == nil && len(d.Specs) == 1 {
						doc = d.Doc
					}
					t, err := parseStruct(ts.Name.Name, st, doc)
					if err != nil {
						return nil, err
					}
					p.types[t.name] = t
					p.order = append(p.order, t.name)
				}
			case *ast.FuncDecl:
				if c, ok := eventTypeMethod(d); ok {
					eventTypes[c.recv] = c.constant
				}
			}
		}
	}
	for name, c := range eventTypes {
		if t, ok := p.types[name]; ok {
			t.eventType = c
		}
	}
	return p, nil
}

type eventTypeConst struct{ recv, constant string }

// eventTypeMethod recognizes func (T) EventType() string { return TypeX }.
func eventTypeMethod(d *ast.FuncDecl) (eventTypeConst, bool) {
	if d.Name.Name != "EventType" || d.Recv == nil || len(d.Recv.List) != 1 || d.Body == nil || len(d.Body.List) != 1 {
		return eventTypeConst{}, false
	}
	recv, ok := d.Recv.List[0].Type.(*ast.Ident)
	if !ok {
		return eventTypeConst{}, false
	}
	ret, ok := d.Body.List[0].(*ast.ReturnStmt)
	if !ok || len(ret.Results) != 1 {
		return eventTypeConst{}, false
	}
	c, ok := ret.Results[0].(*ast.Ident)
	if !ok {
		return eventTypeConst{}, false
	}
	return eventTypeConst{recv.Name, c.Name}, true
}

func parseStruct(name string, st *ast.StructType, doc *ast.CommentGroup) (*structType, error) {
	t := &structType{name: name}
	if doc != nil {
		for _, c := range doc.List {
			switch strings.TrimSpace(c.Text) {
			case "//codec:decode":
				t.decode = true
			case "//codec:append":
				t.append = true
			case "//codec:fields":
				t.byFields = true
			default:
				if strings.HasPrefix(c.Text, "//codec:") {
					return nil, fmt.Errorf("codecgen: %s: unknown directive %s", name, c.Text)
				}
			}
		}
	}
	if t.byFields && !t.append {
		return nil, fmt.Errorf("codecgen: %s: //codec:fields without //codec:append", name)
	}
	for _, fl := range st.Fields.List {
		if len(fl.Names) == 0 {
			t.embeds = true // an error if the type is generated (emitter.reach)
			continue
		}
		var tag reflect.StructTag
		if fl.Tag != nil {
			s, err := strconv.Unquote(fl.Tag.Value)
			if err != nil {
				return nil, fmt.Errorf("codecgen: %s: tag %s: %v", name, fl.Tag.Value, err)
			}
			tag = reflect.StructTag(s)
		}
		for _, n := range fl.Names {
			if !n.IsExported() {
				continue
			}
			f, err := parseField(n.Name, fl.Type, tag)
			if err != nil {
				return nil, fmt.Errorf("codecgen: %s.%s: %v", name, n.Name, err)
			}
			if f.jsonName == "-" {
				continue
			}
			t.fields = append(t.fields, f)
		}
	}
	return t, nil
}

func parseField(name string, typ ast.Expr, tag reflect.StructTag) (field, error) {
	f := field{goName: name, jsonName: name}
	if j, ok := tag.Lookup("json"); ok {
		n, opts, _ := strings.Cut(j, ",")
		if n != "" {
			f.jsonName = n
		}
		for _, o := range strings.Split(opts, ",") {
			f.omitempty = f.omitempty || o == "omitempty"
		}
	}
	if star, ok := typ.(*ast.StarExpr); ok {
		f.ptr, typ = true, star.X
	}
	switch x := typ.(type) {
	case *ast.Ident:
		switch x.Name {
		case "string":
			f.kind = kString
		case "int64":
			f.kind = kInt64
		case "int32":
			f.kind = kInt32
		case "bool":
			f.kind = kBool
		case "float64":
			f.kind = kFloat64
		default:
			f.kind, f.typeName = kStruct, x.Name // checked against the package's structs when used
		}
	case *ast.SelectorExpr:
		if pkg, ok := x.X.(*ast.Ident); ok && pkg.Name == "time" && x.Sel.Name == "Time" {
			f.kind = kTime
		}
	case *ast.ArrayType:
		if elt, ok := x.Elt.(*ast.Ident); ok && x.Len == nil {
			f.kind, f.typeName = kSlice, elt.Name
		}
	case *ast.MapType:
		k, kok := x.Key.(*ast.Ident)
		v, vok := x.Value.(*ast.Ident)
		if kok && vok && k.Name == "string" && v.Name == "string" {
			f.kind = kMap
		}
	}
	if f.kind == kOther {
		var b bytes.Buffer
		if err := format.Node(&b, token.NewFileSet(), typ); err != nil {
			return f, err
		}
		f.typeName = b.String()
	}
	if sc := tag.Get("schema"); sc != "" {
		for _, item := range strings.Split(sc, ",") {
			k, v, _ := strings.Cut(item, "=")
			f.schema = append(f.schema, [2]string{k, v})
		}
	}
	if c, ok := tag.Lookup("codec"); ok {
		for _, item := range strings.Split(c, ",") {
			switch item {
			case "intern":
				f.intern = true
			case "subject":
				f.subject = true
			case "bytes":
				f.bytes = true
			default:
				return f, fmt.Errorf("codec tag: unknown item %q", item)
			}
		}
		if f.kind != kString {
			return f, fmt.Errorf("codec tag %q on a field that is not a string", c)
		}
		if f.intern && f.subject {
			return f, fmt.Errorf("codec tag %q: intern and subject exclude each other", c)
		}
	}
	return f, nil
}
