package chembed

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Role is what a User may do on the endpoint.
type Role int

const (
	// RoleAnalyst runs read-only queries: every query runs with ClickHouse's own
	// readonly=1, set by the server after the client's settings, so neither a URL
	// setting nor the query's SETTINGS clause nor SET can lift it; readonly=1 also
	// makes the engine refuse every table function that is not marked read-only safe
	// (file, url, s3, hdfs, remote, mysql, postgresql, executable, sqlite, format,
	// dictionary, ... are refused; numbers, values, generateRandom, view are not).
	// The server refuses in addition what readonly=1 does not cover in chDB: the
	// scalar file() function and INTO OUTFILE / FROM INFILE (see hostAccess), and URL
	// settings that name files or schema registries (see deniedSetting).
	RoleAnalyst Role = iota + 1
	// RoleWriter is the sink's user: INSERT ... FORMAT/VALUES with the data in the
	// request into one of User.InsertTables (never INSERT ... SELECT, never INSERT
	// INTO FUNCTION, only the formats in writerFormats, Values with literals only);
	// the DDL statements listed verbatim in User.DDL (its migrations); everything
	// else runs as RoleAnalyst does.
	RoleWriter
	// RoleAdmin may run anything the engine runs, files and network included. For
	// tests and operators on the machine; never hand it to a service.
	RoleAdmin
)

func (r Role) String() string {
	switch r {
	case RoleAnalyst:
		return "analyst"
	case RoleWriter:
		return "writer"
	case RoleAdmin:
		return "admin"
	}
	return "Role(" + strconv.Itoa(int(r)) + ")"
}

// User is one set of credentials and what they allow.
type User struct {
	Name, Password string
	Role           Role
	// InsertTables are the tables (unqualified names, in the request's database) a
	// RoleWriter may insert into.
	InsertTables []string
	// DDL are the statements a RoleWriter may run with write access besides inserts,
	// compared after trimming blanks and a final ';' (the sink's migrations).
	DDL []string
}

// passwordBytesMin is the least password length Validate accepts.
const passwordBytesMin = 16

func (u User) validate(i int) []error {
	var errs []error
	name := fmt.Sprintf("Users[%d]", i)
	if u.Name == "" || strings.ContainsAny(u.Name, ":\x00\r\n") {
		errs = append(errs, fmt.Errorf("%s.Name: %q is empty or has ':' or a control character", name, u.Name))
	}
	if len(u.Password) < passwordBytesMin {
		errs = append(errs, fmt.Errorf("%s.Password: at least %d bytes", name, passwordBytesMin))
	}
	if u.Role < RoleAnalyst || u.Role > RoleAdmin {
		errs = append(errs, fmt.Errorf("%s.Role: %s is not analyst, writer or admin", name, u.Role))
	}
	if u.Role != RoleWriter && (len(u.InsertTables) > 0 || len(u.DDL) > 0) {
		errs = append(errs, fmt.Errorf("%s: InsertTables and DDL are for RoleWriter only", name))
	}
	for _, t := range u.InsertTables {
		if !isPlainIdent(t) {
			errs = append(errs, fmt.Errorf("%s.InsertTables: %q is not a plain identifier", name, t))
		}
	}
	return errs
}

// authenticate returns the user the request's credentials name, or nil. With no
// users configured and AllowAnonymous set, every request is an admin.
func (s *Server) authenticate(r *http.Request) *User {
	if len(s.cfg.Users) == 0 {
		if s.cfg.AllowAnonymous {
			return &anonymous
		}
		return nil
	}
	user, pass, ok := credentials(r)
	if !ok {
		return nil
	}
	var found *User
	for i := range s.cfg.Users {
		u := &s.cfg.Users[i]
		// Every user is compared, so the time taken does not say which name exists.
		okUser := subtle.ConstantTimeCompare([]byte(user), []byte(u.Name)) == 1
		okPass := subtle.ConstantTimeCompare([]byte(pass), []byte(u.Password)) == 1
		if okUser && okPass {
			found = u
		}
	}
	return found
}

var anonymous = User{Name: "default", Role: RoleAdmin}

// credentials reads the ways ClickHouse's HTTP interface takes them.
func credentials(r *http.Request) (user, pass string, ok bool) {
	user, pass = r.Header.Get("X-ClickHouse-User"), r.Header.Get("X-ClickHouse-Key")
	if user == "" {
		if u, p, ok := r.BasicAuth(); ok {
			user, pass = u, p
		}
	}
	if user == "" {
		q := r.URL.Query()
		user, pass = q.Get("user"), q.Get("password")
	}
	return user, pass, user != ""
}

// plan is how one statement of a restricted user runs.
type plan struct {
	readonly bool // run with readonly=1 appended after every other setting
	// valuesLiteral forbids expressions in Values data (they may call file()).
	valuesLiteral bool
}

var errForbidden = func(msg string) error {
	return &httpError{code: codeAccessDenied, status: http.StatusForbidden, msg: msg + " (ACCESS_DENIED)"}
}

// authorize decides how user u may run text (the whole query; ins when it is an
// INSERT with data) with the client's settings, or refuses it.
func authorize(u *User, text string, ins insertData, isInsert bool, settings []setting, params []param) (plan, error) {
	if u.Role == RoleAdmin {
		return plan{}, nil
	}
	for _, p := range params {
		// {name:Identifier} substitutes a name, which could be a function's.
		if v := strings.ToLower(strings.Trim(strings.TrimSpace(p.value), "`\"")); hostFunctions[v] || v == "outfile" || v == "infile" {
			return plan{}, errForbidden(fmt.Sprintf("%s: parameter %s names a function that reaches the host.", u.Name, p.name))
		}
	}
	for _, st := range settings {
		if deniedSetting(st.name) {
			return plan{}, errForbidden(fmt.Sprintf("%s: setting %s may not be set by this user.", u.Name, st.name))
		}
	}
	if what, bad := hostAccess(text); bad {
		return plan{}, errForbidden(fmt.Sprintf("%s: %s reaches the host's files; not allowed for this user.", u.Name, what))
	}
	if u.Role == RoleWriter {
		if isInsert {
			table, ok := insertTarget(ins.stmt)
			if !ok || !contains(u.InsertTables, table) {
				return plan{}, errForbidden(fmt.Sprintf("%s: may insert only into %s, as INSERT INTO table [(columns)] FORMAT|VALUES.", u.Name, strings.Join(u.InsertTables, ", ")))
			}
			if !writerFormat(ins.format) {
				return plan{}, errForbidden(fmt.Sprintf("%s: format %s is not allowed for inserts.", u.Name, ins.format))
			}
			return plan{valuesLiteral: true}, nil
		}
		if contains(u.DDL, normalizeStatement(text)) {
			return plan{}, nil
		}
	}
	return plan{readonly: true}, nil
}

// codeAccessDenied is ClickHouse's ACCESS_DENIED.
const codeAccessDenied = 497

// deniedSetting names settings a restricted user may not send: readonly itself,
// DDL switches, and every setting that names a file (format schemas and templates,
// written schemas) or a remote service (Avro's schema registry).
func deniedSetting(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "readonly", "allow_ddl", "allow_introspection_functions":
		return true
	}
	for _, p := range []string{"format_schema", "format_template", "output_format_schema", "format_avro_schema_registry", "input_format_values_"} {
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return strings.Contains(n, "_path") || strings.Contains(n, "_file")
}

// hostFunctions are functions, called as name(...) in any letter case or quoting,
// that read or write the host's files or reach the network. readonly=1 already
// refuses the table functions among them; the scalar file() it does not.
var hostFunctions = map[string]bool{
	"file": true, "filecluster": true, "url": true, "urlcluster": true, "s3": true, "s3cluster": true,
	"gcs": true, "oss": true, "cosn": true, "hdfs": true, "hdfscluster": true, "azureblobstorage": true,
	"azureblobstoragecluster": true, "remote": true, "remotesecure": true, "cluster": true,
	"clusterallreplicas": true, "mysql": true, "postgresql": true, "mongodb": true, "redis": true,
	"sqlite": true, "jdbc": true, "odbc": true, "executable": true, "input": true, "iceberg": true,
	"icebergs3": true, "deltalake": true, "hudi": true, "dictionary": true,
}

// hostAccess scans q's tokens, skipping string literals and comments, for a call of
// one of hostFunctions and for INTO OUTFILE / FROM INFILE (which chDB executes as
// clickhouse-local does, writing and reading files even under readonly=1).
// Quoted identifiers count: `file`(...) is the same call. When unsure it refuses:
// a nested comment ends at its first "*/" here.
func hostAccess(q string) (string, bool) {
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
		case strings.HasPrefix(q[i:], "--") || strings.HasPrefix(q[i:], "# ") || strings.HasPrefix(q[i:], "#!"):
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case strings.HasPrefix(q[i:], "/*"):
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				return "", false
			}
			i += end + 4
		case c == '\'':
			i = skipQuoted(q, i)
		case c == '`' || c == '"' || isIdentStart(c):
			var name string
			if isIdentStart(c) {
				j := i
				for j < len(q) && isIdentChar(q[j]) {
					j++
				}
				name, i = q[i:j], j
				if u := strings.ToUpper(name); u == "OUTFILE" || u == "INFILE" {
					return u, true
				}
			} else {
				j := skipQuoted(q, i)
				name, i = unquote(q[i:j]), j
			}
			k := skipSpaceAndComments(q, i)
			if k < len(q) && q[k] == '(' && hostFunctions[strings.ToLower(name)] {
				return name + "()", true
			}
		default:
			i++
		}
	}
	return "", false
}

// unquote strips the quotes of a quoted identifier and undoes its escapes.
func unquote(s string) string {
	if len(s) < 2 {
		return s
	}
	q := s[0]
	s = s[1 : len(s)-1]
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		case s[i] == q && i+1 < len(s) && s[i+1] == q:
			i++
			b.WriteByte(q)
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// insertTarget parses "INSERT INTO [TABLE] name [(col, ...)]" and nothing else,
// returning name. A database-qualified name, INSERT INTO FUNCTION, SETTINGS and
// anything else make it fail.
func insertTarget(stmt string) (string, bool) {
	i := skipSpaceAndComments(stmt, 0)
	for _, kw := range []string{"INSERT", "INTO"} {
		if !hasKeyword(stmt, i, kw) {
			return "", false
		}
		i = skipSpaceAndComments(stmt, i+len(kw))
	}
	if hasKeyword(stmt, i, "TABLE") {
		i = skipSpaceAndComments(stmt, i+len("TABLE"))
	}
	var name string
	switch {
	case i < len(stmt) && stmt[i] == '`':
		j := skipQuoted(stmt, i)
		name, i = unquote(stmt[i:j]), j
	case i < len(stmt) && isIdentStart(stmt[i]):
		j := i
		for j < len(stmt) && isIdentChar(stmt[j]) {
			j++
		}
		name, i = stmt[i:j], j
	default:
		return "", false
	}
	if strings.EqualFold(name, "FUNCTION") {
		return "", false
	}
	i = skipSpaceAndComments(stmt, i)
	if i < len(stmt) && stmt[i] == '(' {
		for i++; ; {
			i = skipSpaceAndComments(stmt, i)
			if i >= len(stmt) {
				return "", false
			}
			switch c := stmt[i]; {
			case c == ')':
				i++
			case c == ',':
				i++
				continue
			case c == '`':
				i = skipQuoted(stmt, i)
				continue
			case isIdentStart(c):
				for i < len(stmt) && (isIdentChar(stmt[i]) || stmt[i] == '.') {
					i++
				}
				continue
			default:
				return "", false
			}
			break
		}
	}
	if skipSpaceAndComments(stmt, i) != len(stmt) {
		return "", false
	}
	return name, true
}

// writerFormats are the input formats a RoleWriter may insert in: none of them reads
// a schema file or reaches a registry.
var writerFormats = []string{"Native", "RowBinary", "RowBinaryWithNames", "RowBinaryWithNamesAndTypes",
	"Values", "TabSeparated", "TSV", "CSV", "JSONEachRow", "JSONCompactEachRow"}

func writerFormat(f string) bool {
	for _, w := range writerFormats {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}

func normalizeStatement(s string) string {
	return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), ";"))
}

func isPlainIdent(s string) bool {
	if s == "" || !isIdentStart(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isIdentChar(s[i]) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

var errNoUsers = errors.New("Users: none configured and AllowAnonymous not set: the endpoint would answer anyone with full access to the host's files")
