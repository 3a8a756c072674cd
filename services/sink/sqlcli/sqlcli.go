// Package sqlcli runs one SQL query against the configured ClickHouse with server-side
// parameters ({name:Type} in the query, values passed separately, never spliced into the
// text) and prints the result as an aligned table, CSV or JSON lines. The lead wires it as
// `tallyctl sql`: Main is the whole command.
package sqlcli

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"reflect"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/caarlos0/env/v11"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/sink/chstore"
)

// Output formats.
const (
	FormatTable = "table"
	FormatCSV   = "csv"
	FormatJSON  = "json" // one JSON object per row and line
)

// Options shape one run.
type Options struct {
	// Format is table, csv or json (default table).
	Format string
	// RowsMax bounds the rows printed (default 10000, 1..10000000); more is an error, never a
	// silent cut.
	RowsMax int
	// Params are the query's {name:Type} parameter values.
	Params map[string]string
}

// DefaultRowsMax is Options.RowsMax's default.
const DefaultRowsMax = 10000

// Validate checks the options.
func (o Options) Validate() error {
	var errs []error
	switch o.Format {
	case FormatTable, FormatCSV, FormatJSON:
	default:
		errs = append(errs, fmt.Errorf("format: want table, csv or json, got %q", o.Format))
	}
	if o.RowsMax < 1 || o.RowsMax > 10_000_000 {
		errs = append(errs, fmt.Errorf("rows-max: %d not in [1, 10000000]", o.RowsMax))
	}
	for k := range o.Params {
		if k == "" || strings.ContainsAny(k, " \t\n={}:") {
			errs = append(errs, fmt.Errorf("param %q: not a parameter name", k))
		}
	}
	return errors.Join(errs...)
}

// ErrTooManyRows reports a result longer than RowsMax.
var ErrTooManyRows = errors.New("sqlcli: result has more rows than rows-max")

// Named returns the text of schemas/clickhouse/queries/<name>.sql.
func Named(name string) (string, error) {
	b, err := fs.ReadFile(chschema.Queries, "queries/"+name+".sql")
	if err != nil {
		return "", fmt.Errorf("sqlcli: no named query %q (have %s)", name, strings.Join(NamedList(), ", "))
	}
	return string(b), nil
}

// NamedList lists the named queries.
func NamedList() []string {
	ents, _ := fs.ReadDir(chschema.Queries, "queries")
	var out []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".sql"); ok {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Query runs query and returns the column names and the rows as Go values.
func Query(ctx context.Context, conn clickhouse.Conn, query string, o Options) ([]string, [][]any, error) {
	if err := o.Validate(); err != nil {
		return nil, nil, err
	}
	p := clickhouse.Parameters{}
	for k, v := range o.Params {
		p[k] = v
	}
	rs, err := conn.Query(clickhouse.Context(ctx, clickhouse.WithParameters(p)), query)
	if err != nil {
		return nil, nil, fmt.Errorf("sqlcli: query: %w", err)
	}
	defer rs.Close()
	cols := rs.Columns()
	types := rs.ColumnTypes()
	var out [][]any
	for rs.Next() {
		if len(out) >= o.RowsMax {
			return cols, out, ErrTooManyRows
		}
		ptrs := make([]any, len(types))
		for i, t := range types {
			ptrs[i] = reflect.New(t.ScanType()).Interface()
		}
		if err := rs.Scan(ptrs...); err != nil {
			return nil, nil, fmt.Errorf("sqlcli: scan: %w", err)
		}
		row := make([]any, len(ptrs))
		for i, p := range ptrs {
			row[i] = reflect.ValueOf(p).Elem().Interface()
		}
		out = append(out, row)
	}
	if err := rs.Err(); err != nil {
		return nil, nil, fmt.Errorf("sqlcli: read: %w", err)
	}
	return cols, out, nil
}

// Print writes the rows in format.
func Print(w io.Writer, format string, cols []string, rows [][]any) error {
	switch format {
	case FormatJSON:
		enc := json.NewEncoder(w)
		for _, r := range rows {
			obj := make(map[string]any, len(cols))
			for i, c := range cols {
				obj[c] = jsonValue(r[i])
			}
			if err := enc.Encode(obj); err != nil {
				return err
			}
		}
		return nil
	case FormatCSV:
		cw := csv.NewWriter(w)
		if err := cw.Write(cols); err != nil {
			return err
		}
		for _, r := range rows {
			rec := make([]string, len(r))
			for i, v := range r {
				rec[i] = Text(v)
			}
			if err := cw.Write(rec); err != nil {
				return err
			}
		}
		cw.Flush()
		return cw.Error()
	default:
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
		for _, r := range rows {
			rec := make([]string, len(r))
			for i, v := range r {
				rec[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(Text(v))
			}
			fmt.Fprintln(tw, strings.Join(rec, "\t"))
		}
		fmt.Fprintf(tw, "(%d rows)\n", len(rows))
		return tw.Flush()
	}
}

// Text renders one value: times in RFC 3339 UTC, maps with sorted keys, nil as NULL.
func Text(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case fmt.Stringer:
		return x.String()
	case map[string]string:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + x[k]
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return "NULL"
		}
		return Text(rv.Elem().Interface())
	}
	return fmt.Sprint(v)
}

func jsonValue(v any) any {
	switch x := v.(type) {
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case fmt.Stringer:
		return x.String()
	}
	return v
}

type paramFlag map[string]string

func (p paramFlag) String() string { return fmt.Sprint(map[string]string(p)) }
func (p paramFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want name=value, got %q", s)
	}
	p[k] = v
	return nil
}

// Main is `tallyctl sql [-format table|csv|json] [-param name=value ...] [-rows-max N]
// "<query>" | -named <name>`. ClickHouse comes from the CLICKHOUSE_* settings. It returns the
// process exit code: 0 ok, 1 query failed, 2 bad usage or settings.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("sql", flag.ContinueOnError)
	fl.SetOutput(stderr)
	o := Options{Params: map[string]string{}}
	fl.StringVar(&o.Format, "format", FormatTable, "output: table, csv or json (one object per line)")
	fl.IntVar(&o.RowsMax, "rows-max", DefaultRowsMax, "most rows printed; more is an error")
	fl.Var(paramFlag(o.Params), "param", "query parameter name=value for {name:Type} (repeatable)")
	named := fl.String("named", "", "run schemas/clickhouse/queries/<name>.sql: "+strings.Join(NamedList(), ", "))
	if err := fl.Parse(args); err != nil {
		return 2
	}
	query := strings.Join(fl.Args(), " ")
	if *named != "" {
		q, err := Named(*named)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
		query = q
	}
	if strings.TrimSpace(query) == "" {
		fmt.Fprintln(stderr, `usage: tallyctl sql [-format table|csv|json] [-param name=value] "<query>" | -named <name>`)
		return 2
	}
	cfg, err := env.ParseAs[chstore.Config]()
	if err == nil {
		err = errors.Join(cfg.Validate(), o.Validate())
	}
	if err != nil {
		fmt.Fprintln(stderr, "sql:", err)
		return 2
	}
	conn, err := chstore.Open(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "sql:", err)
		return 1
	}
	defer conn.Close()
	cols, rows, err := Query(ctx, conn, query, o)
	if err != nil {
		fmt.Fprintln(stderr, "sql:", err)
		return 1
	}
	if err := Print(stdout, o.Format, cols, rows); err != nil {
		fmt.Fprintln(stderr, "sql:", err)
		return 1
	}
	return 0
}
