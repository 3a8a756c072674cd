package chembed_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/shopspring/decimal"

	"github.com/tallyhq/tally/shared/chembed"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
)

// testTimeout bounds every test's own calls; tests never wait on the clock
// otherwise.
const testTimeout = 2 * time.Minute

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

type openOpt func(*clickhouse.Options)

func withCompression(m clickhouse.CompressionMethod) openOpt {
	return func(o *clickhouse.Options) { o.Compression = &clickhouse.Compression{Method: m} }
}

func withAuth(user, pass string) openOpt {
	return func(o *clickhouse.Options) { o.Auth.Username, o.Auth.Password = user, pass }
}

func options(s *chembed.Server, db string, opts ...openOpt) *clickhouse.Options {
	o := &clickhouse.Options{
		Addr:        []string{s.Addr()},
		Protocol:    clickhouse.HTTP,
		Auth:        clickhouse.Auth{Database: db},
		DialTimeout: 10 * time.Second,
	}
	for _, f := range opts {
		f(o)
	}
	return o
}

// open connects clickhouse-go over HTTP to s, using database db.
func open(t testing.TB, s *chembed.Server, db string, opts ...openOpt) driver.Conn {
	t.Helper()
	conn, err := clickhouse.Open(options(s, db, opts...))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func setup(t *testing.T, opts ...openOpt) (driver.Conn, string) {
	t.Helper()
	s := chembedtest.Start(t)
	db := chembedtest.NewDatabase(t, s)
	return open(t, s, db, opts...), db
}

func mustExec(t *testing.T, conn driver.Conn, q string, args ...any) {
	t.Helper()
	if err := conn.Exec(testCtx(t), q, args...); err != nil {
		t.Fatalf("exec %q: %v", q, err)
	}
}

func count(t *testing.T, conn driver.Conn, q string, args ...any) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(testCtx(t), q, args...).Scan(&n); err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	return n
}

func wantCode(t *testing.T, err error, code int32) {
	t.Helper()
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) {
		t.Fatalf("error %v (%T) is not a *clickhouse.Exception", err, err)
	}
	if ex.Code != code {
		t.Fatalf("exception code %d, want %d: %v", ex.Code, code, ex)
	}
}

func TestOpenPing(t *testing.T) {
	conn, _ := setup(t)
	if err := conn.Ping(testCtx(t)); err != nil {
		t.Fatalf("ping: %v", err)
	}
	v, err := conn.ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.Version.Major < 24 || v.Revision != 0 {
		t.Fatalf("server version %+v: want a real engine version and revision 0", v)
	}
}

func TestDDL(t *testing.T) {
	conn, db := setup(t)
	mustExec(t, conn, `CREATE TABLE usage (id UUID, n UInt64) ENGINE = MergeTree ORDER BY id`)
	mustExec(t, conn, `ALTER TABLE usage ADD COLUMN note String DEFAULT ''`)
	if n := count(t, conn, `SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'usage'`,
		clickhouse.Named("db", db)); n != 1 {
		t.Fatalf("table count %d, want 1", n)
	}
	if n := count(t, conn, `SELECT count() FROM system.columns WHERE database = currentDatabase() AND table = 'usage'`); n != 3 {
		t.Fatalf("column count %d, want 3", n)
	}
	mustExec(t, conn, `DROP TABLE usage SYNC`)
	if n := count(t, conn, `SELECT count() FROM system.tables WHERE database = currentDatabase()`); n != 0 {
		t.Fatalf("tables left after DROP: %d", n)
	}
}

func TestBatchInsert100k(t *testing.T) {
	conn, _ := setup(t)
	mustExec(t, conn, `CREATE TABLE ev (id UInt64, customer String, amount Int64) ENGINE = MergeTree ORDER BY id`)
	const rows = 100_000
	ctx := testCtx(t)
	batch, err := conn.PrepareBatch(ctx, `INSERT INTO ev`)
	if err != nil {
		t.Fatal(err)
	}
	var wantSum int64
	for i := range rows {
		// Strings with blank lines inside: chDB must not cut binary data at "\n\n".
		if err := batch.Append(uint64(i), fmt.Sprintf("cust\n\n%d", i%17), int64(i)); err != nil {
			t.Fatal(err)
		}
		wantSum += int64(i)
	}
	if err := batch.Send(); err != nil {
		t.Fatalf("send: %v", err)
	}
	var n, distinct uint64
	var sum int64
	if err := conn.QueryRow(ctx, `SELECT count(), uniqExact(customer), sum(amount) FROM ev`).Scan(&n, &distinct, &sum); err != nil {
		t.Fatal(err)
	}
	if n != rows || distinct != 17 || sum != wantSum {
		t.Fatalf("got count=%d distinct=%d sum=%d, want %d 17 %d", n, distinct, sum, rows, wantSum)
	}
	r, err := conn.Query(ctx, `SELECT id, customer FROM ev ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var i uint64
	for r.Next() {
		var id uint64
		var cust string
		if err := r.Scan(&id, &cust); err != nil {
			t.Fatal(err)
		}
		if id != i || cust != fmt.Sprintf("cust\n\n%d", i%17) {
			t.Fatalf("row %d: got %d %q", i, id, cust)
		}
		i++
	}
	if err := r.Err(); err != nil || i != rows {
		t.Fatalf("read %d rows, err %v", i, err)
	}
}

type typedRow struct {
	S    string
	LC   string
	U8   uint8
	U32  uint32
	U64  uint64
	I64  int64
	T3   time.Time
	T6   time.Time
	ID   uuid.UUID
	Dec  decimal.Decimal
	M    map[string]string
	Arr  []string
	Null *string
	B    bool
}

func TestTypes(t *testing.T) {
	conn, _ := setup(t)
	mustExec(t, conn, `CREATE TABLE typed (
		s String, lc LowCardinality(String), u8 UInt8, u32 UInt32, u64 UInt64, i64 Int64,
		t3 DateTime64(3, 'UTC'), t6 DateTime64(6), id UUID, dec Decimal(18, 6),
		m Map(String, String), arr Array(String), null Nullable(String), b Bool
	) ENGINE = MergeTree ORDER BY u32`)
	note := "n"
	want := []typedRow{
		{S: "a\x00b\n\nc", LC: "x", U8: 255, U32: 1, U64: 1<<64 - 1, I64: -1 << 63,
			T3: time.Date(2026, 11, 25, 7, 20, 14, 123_000_000, time.UTC),
			T6: time.Date(2026, 1, 2, 3, 4, 5, 123_456_000, time.UTC),
			ID: uuid.MustParse("0195f3c6-1b2a-7c3d-8e4f-5a6b7c8d9e0f"), Dec: decimal.RequireFromString("-123456789012.123456"),
			M: map[string]string{"k": "v", "": "empty"}, Arr: []string{"p", "", "q"}, Null: &note, B: true},
		{S: "", LC: "", U8: 0, U32: 2, U64: 0, I64: 0,
			T3: time.Unix(0, 0).UTC(), T6: time.Unix(0, 0).UTC(), ID: uuid.Nil, Dec: decimal.Zero,
			M: map[string]string{}, Arr: []string{}, Null: nil, B: false},
	}
	ctx := testCtx(t)
	batch, err := conn.PrepareBatch(ctx, `INSERT INTO typed`)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range want {
		if err := batch.Append(r.S, r.LC, r.U8, r.U32, r.U64, r.I64, r.T3, r.T6, r.ID, r.Dec, r.M, r.Arr, r.Null, r.B); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatalf("send: %v", err)
	}
	rows, err := conn.Query(ctx, `SELECT * FROM typed ORDER BY u32`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []typedRow
	for rows.Next() {
		var r typedRow
		if err := rows.Scan(&r.S, &r.LC, &r.U8, &r.U32, &r.U64, &r.I64, &r.T3, &r.T6, &r.ID, &r.Dec, &r.M, &r.Arr, &r.Null, &r.B); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d rows, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.S != w.S || g.LC != w.LC || g.U8 != w.U8 || g.U32 != w.U32 || g.U64 != w.U64 || g.I64 != w.I64 ||
			!g.T3.Equal(w.T3) || !g.T6.Equal(w.T6) || g.ID != w.ID || !g.Dec.Equal(w.Dec) || g.B != w.B ||
			fmt.Sprint(g.M) != fmt.Sprint(w.M) || fmt.Sprint(g.Arr) != fmt.Sprint(w.Arr) ||
			(g.Null == nil) != (w.Null == nil) || (g.Null != nil && *g.Null != *w.Null) {
			t.Errorf("row %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
	// Column types as the engine reports them reach the client intact.
	types := rows.ColumnTypes()
	if types[1].DatabaseTypeName() != "LowCardinality(String)" || types[6].DatabaseTypeName() != "DateTime64(3, 'UTC')" {
		t.Errorf("column types %s, %s", types[1].DatabaseTypeName(), types[6].DatabaseTypeName())
	}
}

func TestReplacingMergeTree(t *testing.T) {
	conn, _ := setup(t)
	mustExec(t, conn, `CREATE TABLE bal (account String, version UInt64, balance Int64)
		ENGINE = ReplacingMergeTree(version) ORDER BY account`)
	mustExec(t, conn, `INSERT INTO bal VALUES ('a', 1, 10), ('b', 1, 5)`)
	mustExec(t, conn, `INSERT INTO bal VALUES ('a', 3, 30), ('a', 2, 20)`)
	var bal int64
	if err := conn.QueryRow(testCtx(t), `SELECT balance FROM bal FINAL WHERE account = 'a'`).Scan(&bal); err != nil {
		t.Fatal(err)
	}
	if bal != 30 {
		t.Fatalf("balance %d, want 30 (the highest version)", bal)
	}
	mustExec(t, conn, `OPTIMIZE TABLE bal FINAL`)
	if n := count(t, conn, `SELECT count() FROM bal`); n != 2 {
		t.Fatalf("%d rows after OPTIMIZE FINAL, want 2", n)
	}
}

func TestAggregatingMaterializedView(t *testing.T) {
	conn, _ := setup(t)
	mustExec(t, conn, `CREATE TABLE events (customer String, user UInt64, latency_ms Float64, amount UInt64)
		ENGINE = MergeTree ORDER BY customer`)
	mustExec(t, conn, `CREATE TABLE rollup (
		customer String,
		users AggregateFunction(uniq, UInt64),
		p50 AggregateFunction(quantile(0.5), Float64),
		total AggregateFunction(sum, UInt64)
	) ENGINE = AggregatingMergeTree ORDER BY customer`)
	mustExec(t, conn, `CREATE MATERIALIZED VIEW rollup_mv TO rollup AS
		SELECT customer, uniqState(user) AS users, quantileState(0.5)(latency_ms) AS p50, sumState(amount) AS total
		FROM events GROUP BY customer`)
	ctx := testCtx(t)
	for part := range 2 { // two inserts: two parts the -Merge combinators must combine
		batch, err := conn.PrepareBatch(ctx, `INSERT INTO events`)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 1000 {
			if err := batch.Append("c1", uint64(i%100+part*100), float64(i%101), uint64(1)); err != nil {
				t.Fatal(err)
			}
		}
		if err := batch.Send(); err != nil {
			t.Fatal(err)
		}
	}
	var users, total uint64
	var p50 float64
	err := conn.QueryRow(ctx, `SELECT uniqMerge(users), quantileMerge(0.5)(p50), sumMerge(total)
		FROM rollup WHERE customer = 'c1' GROUP BY customer`).Scan(&users, &p50, &total)
	if err != nil {
		t.Fatal(err)
	}
	if users != 200 || total != 2000 || p50 < 40 || p50 > 60 {
		t.Fatalf("uniq=%d p50=%v sum=%d, want 200 ~50 2000", users, p50, total)
	}
}

func TestParameters(t *testing.T) {
	conn, _ := setup(t)
	ctx := testCtx(t)
	var s string
	var n uint32
	if err := conn.QueryRow(ctx, `SELECT {s:String}, toUInt32({n:UInt32} + 1)`,
		clickhouse.Named("s", "it's a\ttab"), clickhouse.Named("n", 41)).Scan(&s, &n); err != nil {
		t.Fatal(err)
	}
	if s != "it's a\ttab" || n != 42 {
		t.Fatalf("named: got %q %d", s, n)
	}
	pctx := clickhouse.Context(ctx, clickhouse.WithParameters(clickhouse.Parameters{"x": "7"}))
	if err := conn.QueryRow(pctx, `SELECT toUInt32({x:UInt32} * 6)`).Scan(&n); err != nil || n != 42 {
		t.Fatalf("WithParameters: got %d, %v", n, err)
	}
	var sum int64
	var str string
	if err := conn.QueryRow(ctx, `SELECT toInt64(?) + toInt64(?), ?`, 40, 2, "q'uote").Scan(&sum, &str); err != nil {
		t.Fatal(err)
	}
	if sum != 42 || str != "q'uote" {
		t.Fatalf("positional: got %d %q", sum, str)
	}
}

func TestContextDeadline(t *testing.T) {
	conn, _ := setup(t)
	// 100 blocks of one row sleeping 0.1 s each: 10 s unless cancelled.
	const slow = `SELECT sleepEachRow(0.1) FROM numbers(100) SETTINGS max_block_size = 1`
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := conn.Exec(ctx, slow)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want context.DeadlineExceeded", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("cancel took %s", el)
	}
	// The server kills the abandoned query rather than letting it run out.
	deadline := time.Now().Add(5 * time.Second)
	for count(t, conn, `SELECT count() FROM system.processes WHERE query LIKE '%sleepEachRow(0.1)%' AND query NOT LIKE '%system.processes%'`) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("abandoned query still running after 5 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// max_execution_time as a setting is enforced by the engine. (A context
	// deadline would make clickhouse-go overwrite the setting.)
	sctx := clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{"max_execution_time": 1}))
	wantCode(t, conn.Exec(sctx, slow), 159) // TIMEOUT_EXCEEDED
}

func TestInsertDeduplicationToken(t *testing.T) {
	conn, _ := setup(t)
	mustExec(t, conn, `CREATE TABLE dedup (id UInt64) ENGINE = MergeTree ORDER BY id
		SETTINGS non_replicated_deduplication_window = 1000`)
	send := func(token string) {
		ctx := clickhouse.Context(testCtx(t), clickhouse.WithSettings(clickhouse.Settings{"insert_deduplication_token": token}))
		batch, err := conn.PrepareBatch(ctx, `INSERT INTO dedup`)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			if err := batch.Append(uint64(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := batch.Send(); err != nil {
			t.Fatal(err)
		}
	}
	send("batch-1")
	send("batch-1")
	if n := count(t, conn, `SELECT count() FROM dedup`); n != 10 {
		t.Fatalf("%d rows after sending one batch twice with one token, want 10", n)
	}
	send("batch-2")
	if n := count(t, conn, `SELECT count() FROM dedup`); n != 20 {
		t.Fatalf("%d rows after a second token, want 20", n)
	}
	// The token is a per-request setting: it must not stick to a pooled
	// connection and swallow the next, untokened insert as a duplicate.
	for i := range 4 {
		mustExec(t, conn, fmt.Sprintf(`INSERT INTO dedup VALUES (%d)`, 100+i))
	}
	if n := count(t, conn, `SELECT count() FROM dedup WHERE id >= 100`); n != 4 {
		t.Fatalf("untokened inserts: %d rows, want 4", n)
	}
}

func TestErrors(t *testing.T) {
	conn, _ := setup(t)
	ctx := testCtx(t)
	_, err := conn.Query(ctx, `SELECT * FROM no_such_table`)
	wantCode(t, err, 60) // UNKNOWN_TABLE
	wantCode(t, conn.Exec(ctx, `SELEC 1`), 62)
	sctx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"no_such_setting": 1}))
	wantCode(t, conn.Exec(sctx, `SELECT 1`), 115) // UNKNOWN_SETTING
	_, err = conn.PrepareBatch(ctx, `INSERT INTO no_such_table`)
	wantCode(t, err, 60)
	mustExec(t, conn, `CREATE TABLE strict (n UInt8, CONSTRAINT small CHECK n < 10) ENGINE = MergeTree ORDER BY n`)
	batch, err := conn.PrepareBatch(ctx, `INSERT INTO strict`)
	if err != nil {
		t.Fatal(err)
	}
	if err := batch.Append(uint8(200)); err != nil {
		t.Fatal(err)
	}
	wantCode(t, batch.Send(), 469) // VIOLATED_CONSTRAINT, raised while streaming the insert
	// The connection is still usable after each failure.
	if n := count(t, conn, `SELECT count() FROM strict`); n != 0 {
		t.Fatalf("%d rows in strict after a rejected insert", n)
	}
}
