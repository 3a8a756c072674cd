package chembed_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/google/uuid"
	"github.com/shopspring/decimal"

	"github.com/tallyhq/tally/shared/chembed"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
)

func TestDatabaseSQL(t *testing.T) {
	s := chembedtest.Start(t)
	dbName := chembedtest.NewDatabase(t, s)
	db := clickhouse.OpenDB(options(s, dbName))
	t.Cleanup(func() { _ = db.Close() })
	ctx := testCtx(t)
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE kv (k String, v Int64) ENGINE = MergeTree ORDER BY k`); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO kv`)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		if _, err := stmt.ExecContext(ctx, fmt.Sprintf("k%04d", i), int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("commit: %v", err)
	}
	var n, sum int64
	if err := db.QueryRowContext(ctx, `SELECT count(), sum(v) FROM kv WHERE k >= ?`, "k0000").Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	if n != 1000 || sum != 999*1000/2 {
		t.Fatalf("count %d sum %d", n, sum)
	}
	_, err = db.ExecContext(ctx, `SELECT * FROM missing`)
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) || ex.Code != 60 {
		t.Fatalf("database/sql error %v, want *clickhouse.Exception code 60", err)
	}
}

func TestCompression(t *testing.T) {
	methods := map[string]clickhouse.CompressionMethod{
		"none": clickhouse.CompressionNone, "lz4": clickhouse.CompressionLZ4, "zstd": clickhouse.CompressionZSTD,
		"gzip": clickhouse.CompressionGZIP, "deflate": clickhouse.CompressionDeflate, "br": clickhouse.CompressionBrotli,
	}
	for name, m := range methods {
		t.Run(name, func(t *testing.T) {
			conn, _ := setup(t, withCompression(m))
			mustExec(t, conn, `CREATE TABLE c (id UInt64, s String) ENGINE = MergeTree ORDER BY id`)
			ctx := testCtx(t)
			batch, err := conn.PrepareBatch(ctx, `INSERT INTO c`)
			if err != nil {
				t.Fatal(err)
			}
			// Above one 1 MiB compressed frame, so multi-frame bodies are covered.
			const rows = 50_000
			for i := range rows {
				if err := batch.Append(uint64(i), strings.Repeat("x", i%64)); err != nil {
					t.Fatal(err)
				}
			}
			if err := batch.Send(); err != nil {
				t.Fatalf("send: %v", err)
			}
			r, err := conn.Query(ctx, `SELECT id, s FROM c ORDER BY id`)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			i := 0
			for r.Next() {
				var id uint64
				var s string
				if err := r.Scan(&id, &s); err != nil {
					t.Fatal(err)
				}
				if id != uint64(i) || len(s) != i%64 {
					t.Fatalf("row %d: %d %q", i, id, s)
				}
				i++
			}
			if r.Err() != nil || i != rows {
				t.Fatalf("read %d rows: %v", i, r.Err())
			}
			// Errors stay typed on compressed connections too.
			_, err = conn.Query(ctx, `SELECT * FROM missing`)
			wantCode(t, err, 60)
		})
	}
}

func TestAuth(t *testing.T) {
	chembedtest.Start(t) // the shared engine; this server joins it
	s, err := chembed.Start(chembed.Config{Users: []chembed.User{{Name: "tally", Password: "s3cret-s3cret-s3cret", Role: chembed.RoleAdmin}}}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx := testCtx(t)

	good := open(t, s, "default", withAuth("tally", "s3cret-s3cret-s3cret"))
	var n uint8
	if err := good.QueryRow(ctx, `SELECT 1`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("authorised query: %d, %v", n, err)
	}
	for _, o := range [][]openOpt{{withAuth("tally", "wrong")}, {withAuth("other", "s3cret-s3cret-s3cret")}, nil} {
		conn, err := clickhouse.Open(options(s, "default", o...))
		if err == nil {
			err = conn.Ping(ctx)
			_ = conn.Close()
		}
		wantCode(t, err, 516)
		if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "wrong") {
			t.Fatalf("error echoes a password: %v", err)
		}
	}
	// The other ways ClickHouse's HTTP interface takes credentials.
	post := func(mod func(*http.Request)) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL()+"/", strings.NewReader("SELECT 1"))
		mod(req)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}
	if c := post(func(r *http.Request) {
		r.Header.Set("X-ClickHouse-User", "tally")
		r.Header.Set("X-ClickHouse-Key", "s3cret-s3cret-s3cret")
	}); c != 200 {
		t.Errorf("X-ClickHouse-User/Key: HTTP %d", c)
	}
	if c := post(func(r *http.Request) { r.URL.RawQuery = "user=tally&password=s3cret-s3cret-s3cret" }); c != 200 {
		t.Errorf("user/password params: HTTP %d", c)
	}
	if c := post(func(r *http.Request) { r.SetBasicAuth("tally", "nope") }); c != http.StatusUnauthorized {
		t.Errorf("wrong basic auth: HTTP %d, want 401", c)
	}
	// /ping needs no credentials, as in ClickHouse.
	res, err := http.Get(s.URL() + "/ping")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("ping: HTTP %d", res.StatusCode)
	}
}

func TestBodyBound(t *testing.T) {
	shared := chembedtest.Start(t)
	db := chembedtest.NewDatabase(t, shared)
	s, err := chembed.Start(chembed.Config{BodyBytesMax: 64 << 10, AllowAnonymous: true}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	conn := open(t, s, db)
	mustExec(t, conn, `CREATE TABLE big (s String) ENGINE = MergeTree ORDER BY s`)
	ctx := testCtx(t)
	batch, err := conn.PrepareBatch(ctx, `INSERT INTO big`)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if err := batch.Append(strings.Repeat("y", 1024)); err != nil {
			t.Fatal(err)
		}
	}
	err = batch.Send()
	wantCode(t, err, 307) // TOO_MANY_BYTES
	var he *clickhouse.HTTPError
	if !errors.As(err, &he) || he.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("err %v, want HTTP 413", err)
	}
	if n := count(t, conn, `SELECT count() FROM big`); n != 0 {
		t.Fatalf("%d rows of a refused body were inserted", n)
	}
	// A gzip bomb is bounded after decompression too.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte("SELECT 1 -- " + strings.Repeat(" ", 1<<20)))
	_ = zw.Close()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL()+"/", &gz)
	req.Header.Set("Content-Encoding", "gzip")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestEntityTooLarge || res.Header.Get("X-ClickHouse-Exception-Code") != "307" {
		t.Fatalf("gzip bomb: HTTP %d code %s", res.StatusCode, res.Header.Get("X-ClickHouse-Exception-Code"))
	}
}

// httpDo posts body to s with URL parameters and returns status, headers, body.
func httpDo(t *testing.T, s *chembed.Server, params url.Values, body string, hdr ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, s.URL()+"/?"+params.Encode(), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.ContentLength != int64(len(b)) {
		t.Fatalf("Content-Length %d, body %d bytes", res.ContentLength, len(b))
	}
	return res.StatusCode, res.Header, string(b)
}

func TestCurlStyle(t *testing.T) {
	s := chembedtest.Start(t)
	db := chembedtest.NewDatabase(t, s)
	inDB := url.Values{"database": {db}}
	check := func(name string, gotStatus int, got string, wantStatus int, want string) {
		t.Helper()
		if gotStatus != wantStatus || got != want {
			t.Errorf("%s: HTTP %d %q, want %d %q", name, gotStatus, got, wantStatus, want)
		}
	}
	res, err := http.Get(s.URL() + "/ping")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	check("ping", res.StatusCode, string(b), 200, "Ok.\n")

	st, h, body := httpDo(t, s, nil, "SELECT number, toString(number * 2) FROM numbers(3)")
	check("TSV", st, body, 200, "0\t0\n1\t2\n2\t4\n")
	if !strings.HasPrefix(h.Get("Content-Type"), "text/tab-separated-values") {
		t.Errorf("TSV Content-Type %q", h.Get("Content-Type"))
	}
	st, _, body = httpDo(t, s, url.Values{"default_format": {"JSONEachRow"}}, "SELECT number AS n FROM numbers(2)")
	check("default_format", st, body, 200, "{\"n\":0}\n{\"n\":1}\n")
	st, _, body = httpDo(t, s, nil, "SELECT 'a' AS s FORMAT JSONEachRow")
	check("FORMAT clause", st, body, 200, "{\"s\":\"a\"}\n")
	st, _, body = httpDo(t, s, url.Values{"query": {"SELECT {p:String} AS s"}, "param_p": {"x y"}}, "")
	check("GET-style query param", st, body, 200, "x y\n")

	st, _, body = httpDo(t, s, inDB, "CREATE TABLE t (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
	check("create", st, body, 200, "")
	// Inline data in the body, with a blank line inside a value's text form.
	st, _, body = httpDo(t, s, inDB, "INSERT INTO t FORMAT TSV\n1\tone\\n\\ntwo\n2\tb\n")
	check("insert inline", st, body, 200, "")
	// ?query= is the statement, the body its data.
	ins := url.Values{"database": {db}, "query": {"INSERT INTO t FORMAT JSONEachRow"}}
	st, _, body = httpDo(t, s, ins, "{\"a\":3,\"s\":\"c\"}\n")
	check("insert query param", st, body, 200, "")
	st, _, body = httpDo(t, s, inDB, "INSERT INTO t VALUES (4, 'd\\n\\ne')")
	check("insert values", st, body, 200, "")
	st, _, body = httpDo(t, s, inDB, "SELECT a, s FROM t ORDER BY a FORMAT TSV")
	check("read back", st, body, 200, "1\tone\\n\\ntwo\n2\tb\n3\tc\n4\td\\n\\ne\n")

	st, h, body = httpDo(t, s, inDB, "INSERT INTO t FORMAT TSV\nnot-a-number\tx\n")
	if st != 400 || h.Get("X-ClickHouse-Exception-Code") == "" || !strings.HasPrefix(body, "Code: ") {
		t.Errorf("bad insert: HTTP %d code %q body %q", st, h.Get("X-ClickHouse-Exception-Code"), body)
	}
	st, h, body = httpDo(t, s, nil, "SELECT * FROM nowhere")
	if st != 404 || h.Get("X-ClickHouse-Exception-Code") != "60" || !strings.HasPrefix(body, "Code: 60. DB::Exception: ") {
		t.Errorf("unknown table: HTTP %d code %q body %q", st, h.Get("X-ClickHouse-Exception-Code"), body)
	}
	st, _, body = httpDo(t, s, nil, "")
	if st != 400 || !strings.HasPrefix(body, "Code: 62.") {
		t.Errorf("empty query: HTTP %d %q", st, body)
	}
	for _, enc := range []string{"gzip", "br", "deflate", "zstd"} {
		st, h, _ := httpDo(t, s, nil, "SELECT 1 -- not "+enc, "Content-Encoding", enc)
		if st != 400 || h.Get("X-ClickHouse-Exception-Code") != "271" {
			t.Errorf("corrupt %s body: HTTP %d code %q, want 400 271", enc, st, h.Get("X-ClickHouse-Exception-Code"))
		}
	}
	st, h, _ = httpDo(t, s, url.Values{"decompress": {"1"}}, "SELECT 1 -- not framed")
	if st != 400 || h.Get("X-ClickHouse-Exception-Code") != "271" {
		t.Errorf("corrupt decompress=1 body: HTTP %d code %q, want 400 271", st, h.Get("X-ClickHouse-Exception-Code"))
	}
	// gzip request and response.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte("SELECT 42"))
	_ = zw.Close()
	req, _ := http.NewRequestWithContext(testCtx(t), http.MethodPost, s.URL()+"/?enable_http_compression=1", &gz)
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("Accept-Encoding", "gzip")
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("gzip: Content-Encoding %q", res.Header.Get("Content-Encoding"))
	}
	zr, err := gzip.NewReader(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(zr)
	check("gzip", res.StatusCode, string(b), 200, "42\n")
}

// Settings and USE apply to one request only, even on pooled connections.
func TestRequestsAreSessionless(t *testing.T) {
	s := chembedtest.Start(t)
	db := chembedtest.NewDatabase(t, s)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				p := url.Values{"max_block_size": {fmt.Sprint(g + 1001)}}
				if i%2 == 0 {
					p = url.Values{"database": {db}}
				}
				st, _, body := httpDo(t, s, p, "SELECT getSetting('max_block_size') = "+fmt.Sprint(g+1001)+", currentDatabase()")
				want := "1\tdefault\n"
				if i%2 == 0 {
					want = "0\t" + db + "\n"
				}
				if st != 200 || body != want {
					errs <- fmt.Errorf("goroutine %d req %d: HTTP %d %q, want %q", g, i, st, body, want)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A statement's own SET and USE do not leak either.
	httpDo(t, s, nil, "USE "+db)
	httpDo(t, s, nil, "SET max_block_size = 1001")
	for range 4 {
		_, _, body := httpDo(t, s, nil, "SELECT currentDatabase(), getSetting('max_block_size') = 1001")
		if body != "default\t0\n" {
			t.Fatalf("session state leaked: %q", body)
		}
	}
}

func TestCloseKeepsSharedEngine(t *testing.T) {
	shared := chembedtest.Start(t)
	s, err := chembed.Start(chembed.Config{AllowAnonymous: true}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	st, _, _ := httpDo(t, s, nil, "SELECT 1")
	if st != 200 {
		t.Fatalf("second server: HTTP %d", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	st, _, _ = httpDo(t, shared, nil, "SELECT 1")
	if st != 200 {
		t.Fatalf("shared server after another's Close: HTTP %d", st)
	}
	if _, err := chembed.Start(chembed.Config{DataPath: t.TempDir(), AllowAnonymous: true}, "127.0.0.1:0"); err == nil {
		t.Fatal("a second data path in one process was accepted")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (chembed.Config{AllowAnonymous: true}).Validate(); err != nil {
		t.Fatalf("anonymous config: %v", err)
	}
	if err := (chembed.Config{}).Validate(); err == nil || !strings.Contains(err.Error(), "Users") {
		t.Fatalf("no users and not anonymous: %v, want an error naming Users", err)
	}
	err := chembed.Config{BodyBytesMax: -1, ConcurrentQueriesMax: 1000, QueryTimeout: -time.Second,
		Users: []chembed.User{{Name: "a", Password: "short", Role: chembed.RoleAnalyst}, {Name: "a", Password: "0123456789abcdef"}}}.Validate()
	for _, field := range []string{"BodyBytesMax", "ConcurrentQueriesMax", "QueryTimeout", "Users[0].Password", "Users[1].Role", `Users[1].Name: "a" twice`} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate does not name %s: %v", field, err)
		}
	}
}

// BenchmarkInsertRows measures clickhouse-go batch inserts of a realistic
// usage-event row (15 columns) through the endpoint, in rows/s.
func BenchmarkInsertRows(b *testing.B) {
	s := chembedtest.Start(b)
	db := chembedtest.NewDatabase(b, s)
	conn := open(b, s, db, withCompression(clickhouse.CompressionLZ4))
	ctx := context.Background()
	if err := conn.Exec(ctx, `CREATE TABLE usage_events (
		event_id UUID, customer_id String, subject LowCardinality(String), meter LowCardinality(String),
		event_time DateTime64(3, 'UTC'), ingested_at DateTime64(6), quantity Decimal(18, 6),
		units UInt64, region LowCardinality(String), plan LowCardinality(String), attempt UInt8,
		partition UInt32, offset Int64, properties Map(String, String), tags Array(String)
	) ENGINE = MergeTree ORDER BY (customer_id, event_time)`); err != nil {
		b.Fatal(err)
	}
	const batchRows = 100_000
	ids := make([]uuid.UUID, batchRows)
	for i := range ids {
		ids[i] = uuid.New()
	}
	now := time.Now().UTC()
	qty := decimal.RequireFromString("1.5")
	props := map[string]string{"model": "gpt", "route": "/v1/chat"}
	tags := []string{"prod", "eu"}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		batch, err := conn.PrepareBatch(ctx, `INSERT INTO usage_events`)
		if err != nil {
			b.Fatal(err)
		}
		for r := range batchRows {
			if err := batch.Append(ids[r], fmt.Sprintf("cust-%d", r%1000), "api", "tokens",
				now, now, qty, uint64(r), "eu-west-1", "pro", uint8(1), uint32(r%12), int64(i*batchRows+r), props, tags); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Send(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batchRows)/time.Since(start).Seconds(), "rows/s")
}

func TestBoundsOnQueries(t *testing.T) {
	chembedtest.Start(t)
	s, err := chembed.Start(chembed.Config{ConcurrentQueriesMax: 1, WaitingQueriesMax: 1, ResultBytesMax: 1000, AllowAnonymous: true}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })

	st, h, _ := httpDo(t, s, nil, "SELECT * FROM numbers(1000)")
	if st != 500 || h.Get("X-ClickHouse-Exception-Code") != "396" {
		t.Errorf("oversized result: HTTP %d code %q, want 500 396", st, h.Get("X-ClickHouse-Exception-Code"))
	}

	// Of three concurrent queries one runs, one waits and one is refused.
	const slow = "SELECT sleepEachRow(0.1) FROM numbers(8) SETTINGS max_block_size = 1 FORMAT Null"
	var wg sync.WaitGroup
	statuses := make(chan string, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, h, _ := httpDo(t, s, nil, slow)
			statuses <- fmt.Sprint(st, " ", h.Get("X-ClickHouse-Exception-Code"))
		}()
	}
	wg.Wait()
	close(statuses)
	got := map[string]int{}
	for st := range statuses {
		got[st]++
	}
	if got["200 "] != 2 || got["503 202"] != 1 {
		t.Fatalf("statuses %v, want two 200 and one 503 with code 202", got)
	}
}

// BenchmarkSmallQuery measures the round trip of a one-row query through
// clickhouse-go, the endpoint's per-request overhead.
func BenchmarkSmallQuery(b *testing.B) {
	s := chembedtest.Start(b)
	conn := open(b, s, "default")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		var n uint8
		if err := conn.QueryRow(ctx, `SELECT 1`).Scan(&n); err != nil {
			b.Fatal(err)
		}
	}
}
