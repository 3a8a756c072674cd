package chembed_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/chembed"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/httpx"
)

const (
	analystPass = "analyst-password-0123456789"
	writerPass  = "writer-password-0123456789"
	adminPass   = "admin-password-0123456789"
)

// securedServer starts an endpoint with the three roles on the shared engine, and a
// database holding table t (x Int64) with one row, for the writer to insert into.
func securedServer(t *testing.T) (*chembed.Server, string) {
	t.Helper()
	shared := chembedtest.Start(t)
	db := chembedtest.NewDatabase(t, shared)
	conn := open(t, shared, db)
	mustExec(t, conn, `CREATE TABLE t (x Int64, s String DEFAULT '') ENGINE = MergeTree ORDER BY x`)
	mustExec(t, conn, `CREATE TABLE other (x Int64) ENGINE = MergeTree ORDER BY x`)
	mustExec(t, conn, `INSERT INTO t (x) VALUES (1)`)
	s, err := chembed.Start(chembed.Config{Users: []chembed.User{
		{Name: "analyst", Password: analystPass, Role: chembed.RoleAnalyst},
		{Name: "writer", Password: writerPass, Role: chembed.RoleWriter, InsertTables: []string{"t"},
			DDL: []string{"CREATE TABLE IF NOT EXISTS w (x Int64) ENGINE = MergeTree ORDER BY x"}},
		{Name: "admin", Password: adminPass, Role: chembed.RoleAdmin},
	}}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, db
}

// as runs query as user (password pass) with extra URL parameters, body in the POST.
func as(t *testing.T, s *chembed.Server, db, user, pass, query, body string, extra ...string) (int, string, string) {
	t.Helper()
	p := url.Values{"database": {db}, "query": {query}}
	for i := 0; i+1 < len(extra); i += 2 {
		p.Set(extra[i], extra[i+1])
	}
	hdr := []string{}
	if user != "" {
		hdr = append(hdr, "X-ClickHouse-User", user, "X-ClickHouse-Key", pass)
	}
	code, h, b := httpDo(t, s, p, body, hdr...)
	return code, h.Get("X-ClickHouse-Exception-Code"), b
}

func rows(t *testing.T, s *chembed.Server, db, table string) string {
	t.Helper()
	code, _, b := as(t, s, db, "admin", adminPass, "SELECT count() FROM "+table, "")
	if code != 200 {
		t.Fatalf("count %s: HTTP %d %s", table, code, b)
	}
	return strings.TrimSpace(b)
}

// TestAnalystIsReadOnly: each attack (writes, DDL, settings, file, URL and remote table
// functions), as the analyst, is refused and leaves no trace; plain reads work.
func TestAnalystIsReadOnly(t *testing.T) {
	s, db := securedServer(t)
	out := filepath.Join(t.TempDir(), "written")
	cases := []struct {
		name, query string
		extra       []string
	}{
		{"file table function", `SELECT * FROM file('/proc/self/environ', 'RawBLOB')`, nil},
		{"file scalar", `SELECT file('/proc/self/environ')`, nil},
		{"file scalar backquoted", "SELECT `file`('/proc/self/environ')", nil},
		{"file scalar double-quoted", `SELECT "file" /* c */ ('/proc/self/environ')`, nil},
		{"insert into function file", `INSERT INTO FUNCTION file('` + out + `', 'TSV', 'x String') VALUES ('a')`, nil},
		{"into outfile", `SELECT 1 INTO OUTFILE '` + out + `'`, nil},
		{"url", `SELECT * FROM url('http://` + s.Addr() + `/?query=DROP+TABLE+t', 'RawBLOB')`, nil},
		{"remote", `SELECT * FROM remote('127.0.0.1:9000', system.one)`, nil},
		{"s3", `SELECT * FROM s3('http://127.0.0.1:1/bucket/x', 'RawBLOB')`, nil},
		{"executable", `SELECT * FROM executable('id', 'TSV', 'x String')`, nil},
		{"create", `CREATE TABLE evil (x Int64) ENGINE = Memory`, nil},
		{"drop", `DROP TABLE t`, nil},
		{"truncate", `TRUNCATE TABLE t`, nil},
		{"insert", `INSERT INTO t (x) VALUES (2)`, nil},
		{"insert select", `INSERT INTO t (x) SELECT 3`, nil},
		{"alter delete", `ALTER TABLE t DELETE WHERE 1`, nil},
		{"url setting lifts readonly", `INSERT INTO t (x) VALUES (4)`, []string{"readonly", "0"}},
		{"url setting readonly=2", `SELECT * FROM file('/proc/self/environ', 'RawBLOB')`, []string{"readonly", "2"}},
		{"settings clause lifts readonly", `SELECT * FROM file('/proc/self/environ', 'RawBLOB') SETTINGS readonly = 0`, nil},
		{"set readonly", `SET readonly = 0`, nil},
		{"format schema file", `SELECT 1`, []string{"format_schema", "/proc/self/environ", "default_format", "Protobuf"}},
		{"template file", `SELECT 1`, []string{"format_template_resultset", "/proc/self/environ", "default_format", "Template"}},
		{"function name as a parameter", `SELECT {f:Identifier}('/proc/self/environ')`, []string{"param_f", "file"}},
	}
	for _, c := range cases {
		code, ex, body := as(t, s, db, "analyst", analystPass, c.query, "", c.extra...)
		if code == 200 || ex == "" {
			t.Errorf("%s: HTTP %d, code %q, body %q: want refused", c.name, code, ex, body)
		}
		if strings.Contains(body, "PATH=") || strings.Contains(body, "HOME=") {
			t.Errorf("%s: the answer carries the environment: %q", c.name, body)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("the analyst wrote %s (stat: %v)", out, err)
	}
	if n := rows(t, s, db, "t"); n != "1" {
		t.Errorf("table t has %s rows after the analyst's attempts, want 1", n)
	}
	if code, _, _ := as(t, s, db, "admin", adminPass, "EXISTS TABLE evil", ""); code != 200 {
		t.Fatalf("EXISTS: HTTP %d", code)
	}
	if _, _, b := as(t, s, db, "admin", adminPass, "EXISTS TABLE evil", ""); strings.TrimSpace(b) != "0" {
		t.Errorf("the analyst created a table")
	}
	// What an analyst does works, settings included, and readonly does not stick to
	// the engine's connections: the writer still writes afterwards.
	for q, want := range map[string]string{
		`SELECT sum(x) FROM t`:                                                 "1",
		`SELECT count() FROM numbers(10) WHERE number > 4`:                     "5",
		`SELECT count() FROM system.tables WHERE database = currentDatabase()`: "2",
	} {
		code, _, b := as(t, s, db, "analyst", analystPass, q, "", "max_threads", "1")
		if code != 200 || strings.TrimSpace(b) != want {
			t.Errorf("%s: HTTP %d %q, want %s", q, code, b, want)
		}
	}
	for range 6 { // more than the pool's connections
		if code, _, b := as(t, s, db, "writer", writerPass, "INSERT INTO t (x) VALUES", "(7)"); code != 200 {
			t.Fatalf("writer after analyst: HTTP %d %s", code, b)
		}
	}
}

// TestAuthenticationRequired: no credentials, a wrong password, a user of another
// server, and an anonymous-less config are all refused.
func TestAuthenticationRequired(t *testing.T) {
	s, db := securedServer(t)
	for _, c := range []struct{ user, pass string }{{"", ""}, {"analyst", "wrong"}, {"analyst", writerPass}, {"default", ""}, {"nobody", analystPass}} {
		code, ex, body := as(t, s, db, c.user, c.pass, `SELECT * FROM file('/proc/self/environ', 'RawBLOB')`, "")
		if code != http.StatusUnauthorized || ex != "516" || strings.Contains(body, "PATH=") {
			t.Errorf("user %q password %q: HTTP %d code %s %q, want 401 code 516", c.user, c.pass, code, ex, body)
		}
	}
	if _, err := chembed.Start(chembed.Config{}, "127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "AllowAnonymous") {
		t.Fatalf("Start without users: %v, want refused", err)
	}
}

// TestWriterOnlyInserts: the sink's user inserts into its tables and runs its listed
// DDL, and nothing else that writes, reads files or reaches the network.
func TestWriterOnlyInserts(t *testing.T) {
	s, db := securedServer(t)
	ctx := testCtx(t)
	w := open(t, s, db, withAuth("writer", writerPass))
	b, err := w.PrepareBatch(ctx, `INSERT INTO t (x, s)`)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := b.Append(int64(i+10), "ok"); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatalf("writer's batch insert into t: %v", err)
	}
	if n := rows(t, s, db, "t"); n != "11" {
		t.Fatalf("t has %s rows, want 11", n)
	}
	if err := w.Exec(ctx, `CREATE TABLE IF NOT EXISTS w (x Int64) ENGINE = MergeTree ORDER BY x;`); err != nil {
		t.Fatalf("the writer's listed DDL: %v", err)
	}
	var sum int64
	if err := w.QueryRow(ctx, `SELECT sum(x) FROM t`).Scan(&sum); err != nil || sum != 1+145 {
		t.Fatalf("writer reads t: %d, %v", sum, err)
	}
	out := filepath.Join(t.TempDir(), "written")
	for _, c := range []struct{ name, query, body string }{
		{"other table", `INSERT INTO other (x) VALUES`, `(1)`},
		{"qualified table", `INSERT INTO system.t (x) VALUES`, `(1)`},
		{"insert into function file", `INSERT INTO FUNCTION file('` + out + `', 'TSV', 'x String') FORMAT TSV`, "a\n"},
		{"insert select file", `INSERT INTO t (s) SELECT * FROM file('/proc/self/environ', 'RawBLOB')`, ""},
		{"insert from infile", `INSERT INTO t FROM INFILE '/proc/self/environ' FORMAT TSV`, ""},
		{"values expression in body", `INSERT INTO t (x, s) VALUES`, `(99, toString(length(getSetting('max_threads'))))`},
		{"values file in text", `INSERT INTO t (x, s) VALUES (98, file('/proc/self/environ'))`, ""},
		{"template format", `INSERT INTO t (x) FORMAT Template`, "1\n"},
		{"settings in insert", `INSERT INTO t (x) SETTINGS async_insert = 1 VALUES`, "(97)"},
		{"select file", `SELECT * FROM file('/proc/self/environ', 'RawBLOB')`, ""},
		{"url", `SELECT * FROM url('http://127.0.0.1:1/', 'RawBLOB')`, ""},
		{"unlisted DDL", `CREATE TABLE IF NOT EXISTS evil (x Int64) ENGINE = File(TSV, '` + out + `')`, ""},
		{"listed DDL plus more", "CREATE TABLE IF NOT EXISTS w (x Int64) ENGINE = MergeTree ORDER BY x; DROP TABLE t", ""},
		{"drop", `DROP TABLE t`, ""},
		{"alter", `ALTER TABLE t DELETE WHERE 1`, ""},
	} {
		code, ex, body := as(t, s, db, "writer", writerPass, c.query, c.body)
		if code == 200 || ex == "" || strings.Contains(body, "PATH=") {
			t.Errorf("%s: HTTP %d code %q %q, want refused", c.name, code, ex, body)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("the writer wrote %s (stat: %v)", out, err)
	}
	if n := rows(t, s, db, "t"); n != "11" {
		t.Errorf("t has %s rows after refused statements, want 11", n)
	}
	if n := rows(t, s, db, "other"); n != "0" {
		t.Errorf("other has %s rows, want 0", n)
	}
}

// TestSlowBodyIsCut: a client that sends headers and then trickles (here: stops)
// its body is cut off at Server.ReadTimeout (the default, 15 s), as on the services,
// instead of holding its connection and a query slot.
func TestSlowBodyIsCut(t *testing.T) {
	s, _ := securedServer(t)
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nX-ClickHouse-User: analyst\r\nX-ClickHouse-Key: %s\r\nContent-Length: 1000\r\n\r\nSELECT ", analystPass)
	// The test's own bound, far above the server's: it fails only if the server
	// never cuts the connection.
	_ = c.SetReadDeadline(time.Now().Add(90 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the server held a stalled body for 90 s")
		}
		return // the connection was closed: cut off
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("stalled body: HTTP %d, want 408", res.StatusCode)
	}
}

// TestLongQueryOutlivesReadTimeout: once the body is in, a query may run longer
// than Server.ReadTimeout.
func TestLongQueryOutlivesReadTimeout(t *testing.T) {
	chembedtest.Start(t)
	s, err := chembed.Start(chembed.Config{AllowAnonymous: true, Server: httpServer(300 * time.Millisecond)}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL()+"/", strings.NewReader("SELECT sleep(1), sleep(1)"))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("a 2 s query with a 300 ms ReadTimeout: HTTP %d %s", res.StatusCode, b)
	}
}

func httpServer(read time.Duration) httpx.ServerConfig {
	c := httpx.DefaultServerConfig
	c.ReadTimeout, c.ReadHeaderTimeout = read, read
	return c
}
