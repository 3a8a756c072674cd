// Package settings lists every environment setting of every Tally service, by reflection
// over their Config structs, so that the README's settings table can be checked (and
// generated) from the code itself.
package settings

import (
	"reflect"
	"sort"
	"strings"

	"github.com/tallyhq/tally/services/admitter"
	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/sink"
)

// Setting is one environment variable.
type Setting struct {
	Service string
	Name    string
	Default string
}

// All returns every setting of every service, sorted by service then name. A variable
// shared by several services (KAFKA_BROKERS, ...) is listed once under "all" when its
// default agrees everywhere.
func All() []Setting {
	var raw []Setting
	for _, svc := range Services() {
		raw = append(raw, Of(svc)...)
	}
	byName := map[string][]Setting{}
	for _, s := range raw {
		byName[s.Name] = append(byName[s.Name], s)
	}
	var out []Setting
	for name, ss := range byName {
		same := true
		for _, s := range ss[1:] {
			same = same && s.Default == ss[0].Default
		}
		if len(ss) > 1 && same {
			out = append(out, Setting{Service: "all", Name: name, Default: ss[0].Default})
			continue
		}
		out = append(out, ss...)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return order(out[i].Service) < order(out[j].Service)
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Services names every service with settings.
func Services() []string { return []string{"admitter", "ledger", "sink"} }

// Of returns every variable the service reads, shared ones included, in field order; nil
// for an unknown service.
func Of(service string) []Setting {
	configs := map[string]any{"admitter": admitter.Config{}, "ledger": ledger.Config{}, "sink": sink.Config{}}
	c, ok := configs[service]
	if !ok {
		return nil
	}
	var out []Setting
	walk(service, "", reflect.TypeOf(c), &out)
	return out
}

func order(svc string) int {
	return strings.Index("all admitter ledger sink", svc)
}

func walk(svc, prefix string, t reflect.Type, out *[]Setting) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, ok := f.Tag.Lookup("env")
		if name == "-" || !f.IsExported() {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Struct && !ok {
			walk(svc, prefix+f.Tag.Get("envPrefix"), ft, out)
			continue
		}
		if !ok || name == "" {
			continue
		}
		name, _, _ = strings.Cut(name, ",")
		*out = append(*out, Setting{Service: svc, Name: prefix + name, Default: f.Tag.Get("envDefault")})
	}
}
