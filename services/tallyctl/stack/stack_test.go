package stack_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/tallyctl/internal/waitfor"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/tallyhq/tally/services/sink"
	"github.com/tallyhq/tally/services/tallyctl/stack"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// lockedBuffer collects log output written from many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startStack starts the pipeline on fresh topics (kfake, or real Kafka with KAFKA_BROKERS) and
// a fresh database of the test process's ClickHouse engine. With embedCH the stack starts its
// own embedded endpoint (on the same engine), so that cfg's ClickHouse credentials apply;
// otherwise it uses the shared endpoint.
func startStack(t *testing.T, cfg stack.Config, embedCH bool) *stack.Stack {
	t.Helper()
	kc := kafkatest.Start(t)
	ch := chembedtest.Start(t) // loads libchdb.so and starts the engine the stack's endpoint shares
	cfg.ClickHouseDatabase = chembedtest.NewDatabase(t, ch)
	cfg.Brokers, cfg.TopicPrefix, cfg.Partitions = kc.Brokers, kc.Prefix, kafkatest.Partitions
	if embedCH {
		cfg.EmbedClickHouseAddr = "127.0.0.1:0"
	} else {
		cfg.ClickHouseAddr = ch.Addr()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg.DetectIntervalMs = 86_400_000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start stack: %v", err)
	}
	t.Cleanup(st.Close)
	return st
}

type answer struct {
	status int
	body   string
}

// errorCode is the "code" of a JSON error answer ("" when the body is not one).
func (a answer) errorCode() string {
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if json.Unmarshal([]byte(a.body), &e) != nil {
		return ""
	}
	return e.Error.Code
}

func call(t *testing.T, method, url, token, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b)}
}

func grantBody(id string) string {
	return `{"grant_id":"` + id + `","amount_micros":50000000,"source":"purchase"}`
}

func admitBody(rid, acct string) string {
	return `{"request_id":"` + rid + `","account_id":"` + acct + `","endpoint":"codex.responses","estimate":{"tokens_in":1000,"tokens_out":1000}}`
}

func finishBody(rid string) string {
	return `{"request_id":"` + rid + `","status":"succeeded","usage":{"tokens_in":900,"tokens_out":800},"duration_ms":1200}`
}

// admitWhenFunded admits requests under new ids until one is allowed (the grant has to reach
// the admitter through the ledger first) and returns its id.
func admitWhenFunded(t *testing.T, st *stack.Stack, acct, prefix string) string {
	t.Helper()
	var rid string
	n := 0
	waitfor.Eventually(t, "admit once the grant reached the admitter", 60*time.Second, func() error {
		n++
		rid = fmt.Sprintf("%s-%d", prefix, n)
		a := call(t, "POST", st.AdmitterURL+"/v1/admit", st.APIKey, admitBody(rid, acct))
		if a.status == 200 && strings.Contains(a.body, `"allowed":true`) {
			return nil
		}
		if a.status == 429 {
			return fmt.Errorf("denied: %s", a.body)
		}
		t.Fatalf("admit: %d %s", a.status, a.body)
		return nil
	})
	return rid
}

// TestAdminEndpointsRefuseEdgeKeys: the ledger's admin API answers 403 forbidden to the
// admitter's edge API key (and 401 to no key), the admitter answers 403 to the admin token,
// and each accepts its own secret.
func TestAdminEndpointsRefuseEdgeKeys(t *testing.T) {
	st := startStack(t, stack.Config{}, false)
	const acct = "acct_keys"
	ledger := []struct{ method, path, body string }{
		{"GET", "/v1/accounts/" + acct, ""},
		{"GET", "/v1/accounts/" + acct + "/entries", ""},
		{"PUT", "/v1/accounts/" + acct, `{"tier":"pro"}`},
		{"POST", "/v1/accounts/" + acct + "/grants", grantBody("g-edge")},
		{"POST", "/v1/accounts/" + acct + "/adjustments", `{"adjustment_id":"adj-edge","amount_micros":5,"reason":"x"}`},
	}
	for _, r := range ledger {
		if a := call(t, r.method, st.LedgerURL+r.path, st.APIKey, r.body); a.status != 403 || a.errorCode() != "forbidden" {
			t.Errorf("ledger %s %s with the edge API key: %d %s, want 403 forbidden", r.method, r.path, a.status, a.body)
		}
		if a := call(t, r.method, st.LedgerURL+r.path, "", r.body); a.status != 401 || a.errorCode() != "unauthenticated" {
			t.Errorf("ledger %s %s without a key: %d %s, want 401 unauthenticated", r.method, r.path, a.status, a.body)
		}
	}
	// Nothing the edge key attempted took effect: the grant was never published.
	if a := call(t, "POST", st.LedgerURL+"/v1/accounts/"+acct+"/grants", st.AdminToken, grantBody("g-admin")); a.status != 202 {
		t.Fatalf("grant with the admin token: %d %s", a.status, a.body)
	}
	waitfor.Eventually(t, "grant folded", 60*time.Second, func() error {
		a := call(t, "GET", st.LedgerURL+"/v1/accounts/"+acct, st.AdminToken, "")
		if a.status != 200 || !strings.Contains(a.body, `"available_micros":50000000`) {
			return fmt.Errorf("%d %s", a.status, a.body)
		}
		return nil
	})

	for _, path := range []string{"/v1/admit", "/v1/finish"} {
		body := admitBody("r-admin-token", acct)
		if path == "/v1/finish" {
			body = finishBody("r-admin-token")
		}
		if a := call(t, "POST", st.AdmitterURL+path, st.AdminToken, body); a.status != 403 || a.errorCode() != "forbidden" {
			t.Errorf("admitter %s with the admin token: %d %s, want 403 forbidden", path, a.status, a.body)
		}
	}
	rid := admitWhenFunded(t, st, acct, "r-edge")
	if a := call(t, "POST", st.AdmitterURL+"/v1/finish", st.APIKey, finishBody(rid)); a.status != 200 {
		t.Fatalf("finish with the edge key: %d %s", a.status, a.body)
	}
	// The admitter refused the admin token before deciding: no request under that id exists,
	// so the edge key can still use it, and is admitted.
	if a := call(t, "POST", st.AdmitterURL+"/v1/admit", st.APIKey, admitBody("r-admin-token", acct)); a.status != 200 {
		t.Fatalf("admit under the id the admin token tried: %d %s", a.status, a.body)
	}
}

// chQuery runs a query on the ClickHouse HTTP endpoint with the given credentials (user ""
// = none) and returns the answer.
func chQuery(t *testing.T, base, db, user, password, q string) answer {
	t.Helper()
	req, _ := http.NewRequest("POST", base+"/?database="+url.QueryEscape(db), strings.NewReader(q))
	if user != "" {
		req.Header.Set("X-ClickHouse-User", user)
		req.Header.Set("X-ClickHouse-Key", password)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b)}
}

// TestClickHouseCredentials: with ClickHouseUser/ClickHousePassword the embedded endpoint
// refuses queries without credentials or with a wrong password, and the pipeline (the sink
// presenting them) still stores every event.
func TestClickHouseCredentials(t *testing.T) {
	const user, password = "tally_sink", "chpw-5f1d2c7e9ab04d7e"
	st := startStack(t, stack.Config{ClickHouseUser: user, ClickHousePassword: password}, true)
	if st.ClickHouseUser != user || st.ClickHousePassword != password {
		t.Fatalf("stack credentials %q/%q", st.ClickHouseUser, st.ClickHousePassword)
	}
	db := st.ClickHouseDatabase
	for _, c := range []struct{ user, password string }{{"", ""}, {user, "wrong"}, {"default", ""}, {"default", password}} {
		a := chQuery(t, st.ClickHouse, db, c.user, c.password, "SELECT 1")
		if a.status == 200 || !strings.Contains(a.body, "AUTHENTICATION_FAILED") {
			t.Errorf("query as %q/%q: %d %q, want refused", c.user, c.password, a.status, a.body)
		}
	}
	if a := chQuery(t, st.ClickHouse, db, user, password, "SELECT 1"); a.status != 200 || strings.TrimSpace(a.body) != "1" {
		t.Fatalf("query with the credentials: %d %q", a.status, a.body)
	}

	const acct = "acct_ch"
	if a := call(t, "POST", st.LedgerURL+"/v1/accounts/"+acct+"/grants", st.AdminToken, grantBody("g-ch")); a.status != 202 {
		t.Fatalf("grant: %d %s", a.status, a.body)
	}
	rid := admitWhenFunded(t, st, acct, "r-ch")
	if a := call(t, "POST", st.AdmitterURL+"/v1/finish", st.APIKey, finishBody(rid)); a.status != 200 {
		t.Fatalf("finish: %d %s", a.status, a.body)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{strings.TrimPrefix(st.ClickHouse, "http://")},
		Protocol: clickhouse.HTTP, Auth: clickhouse.Auth{Database: db, Username: user, Password: password}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	count := func(q string, args ...any) (uint64, error) {
		var n uint64
		err := conn.QueryRow(context.Background(), q, args...).Scan(&n)
		return n, err
	}
	waitfor.Eventually(t, "the request's events in ClickHouse", 60*time.Second, func() error {
		n, err := count("SELECT count() FROM usage_events WHERE request_id = ?", rid)
		if err != nil || n != 2 {
			return fmt.Errorf("usage_events for %s: %d, %v", rid, n, err)
		}
		if n, err = count("SELECT count() FROM ledger_entries WHERE account_id = ?", acct); err != nil || n == 0 {
			return fmt.Errorf("ledger_entries for %s: %d, %v", acct, n, err)
		}
		return nil
	})
}

// TestClickHouseRolesByDefault: with no ClickHouse settings the embedded endpoint has a
// generated read-only analyst and a generated writer for the sink; neither can read the
// process's environment (which holds the keys) or drop a table, and no credentials get
// nothing; the sink still stores the events through its writer user.
func TestClickHouseRolesByDefault(t *testing.T) {
	st := startStack(t, stack.Config{}, true)
	if st.ClickHouseAnalystUser != "analyst" || len(st.ClickHouseAnalystPassword) < 16 || st.ClickHouseUser != "tally" ||
		len(st.ClickHousePassword) < 16 || st.ClickHouseAnalystPassword == st.ClickHousePassword {
		t.Fatalf("generated credentials: analyst %q/%q, writer %q/%q", st.ClickHouseAnalystUser, st.ClickHouseAnalystPassword,
			st.ClickHouseUser, st.ClickHousePassword)
	}
	db := st.ClickHouseDatabase
	environ := "SELECT * FROM file('/proc/self/environ', 'RawBLOB')"
	for _, c := range []struct{ who, user, password, q string }{
		{"nobody", "", "", "SELECT 1"},
		{"analyst", st.ClickHouseAnalystUser, st.ClickHouseAnalystPassword, environ},
		{"analyst", st.ClickHouseAnalystUser, st.ClickHouseAnalystPassword, "DROP TABLE usage_events"},
		{"writer", st.ClickHouseUser, st.ClickHousePassword, environ},
		{"writer", st.ClickHouseUser, st.ClickHousePassword, "DROP TABLE usage_events"},
	} {
		a := chQuery(t, st.ClickHouse, db, c.user, c.password, c.q)
		if a.status == 200 || strings.Contains(a.body, st.AdminToken) || strings.Contains(a.body, "PATH=") {
			t.Errorf("%s: %q answered %d %.200q, want refused", c.who, c.q, a.status, a.body)
		}
	}
	rid := admitWhenFundedAfterGrant(t, st, "acct_roles")
	waitfor.Eventually(t, "the request's events in ClickHouse, read by the analyst", 60*time.Second, func() error {
		a := chQuery(t, st.ClickHouse, db, st.ClickHouseAnalystUser, st.ClickHouseAnalystPassword,
			"SELECT count() FROM usage_events WHERE request_id = '"+rid+"'")
		if a.status != 200 || strings.TrimSpace(a.body) != "1" {
			return fmt.Errorf("%d %s", a.status, a.body)
		}
		return nil
	})
}

func admitWhenFundedAfterGrant(t *testing.T, st *stack.Stack, acct string) string {
	t.Helper()
	if a := call(t, "POST", st.LedgerURL+"/v1/accounts/"+acct+"/grants", st.AdminToken, grantBody("g-"+acct)); a.status != 202 {
		t.Fatalf("grant: %d %s", a.status, a.body)
	}
	return admitWhenFunded(t, st, acct, "r-"+acct)
}

// TestSameSecretForBothRolesRefused: the stack refuses one secret as both the edge key and
// the admin token (and keys without their role's prefix) before it starts anything.
func TestSameSecretForBothRolesRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range []struct{ key, admin, want string }{
		{"tk_same-secret-1234", "tk_same-secret-1234", "same secret"},
		{"ta_x-1234567890", "ta_y-1234567890", `must start with "tk_"`},
		{"tk_x-1234567890", "tk_y-1234567890", `must start with "ta_"`},
	} {
		st, err := stack.Start(ctx, stack.Config{APIKey: c.key, AdminToken: c.admin, KafkaAddr: "127.0.0.1:1"})
		if err == nil {
			st.Close()
			t.Fatalf("%s/%s: started", c.key, c.admin)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s/%s: %v, want %q", c.key, c.admin, err, c.want)
		}
	}
}

// TestSecretsNeverLogged runs the full stack with a JSON logger at DEBUG level (also installed
// as the process default, which the standard log package and net/http's server errors go
// through), drives grants, admits and finishes, failed authentications with wrong keys on
// both APIs, wrong and missing ClickHouse credentials, and a sink started with a wrong
// ClickHouse password; then fails if any secret appears in the captured logs.
func TestSecretsNeverLogged(t *testing.T) {
	buf := &lockedBuffer{}
	logger := slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	prev := slog.Default()
	slog.SetDefault(logger)
	t.Cleanup(func() { slog.SetDefault(prev) })

	const chUser, chPassword = "tally_sink", "chpw-a8e4410b77c24e0f"
	const wrongAPIKey, wrongAdminToken, wrongCHPassword = "tk_wrong_6c0b9d1e2f3a", "ta_wrong_7d1c0e2f3b4a", "chpw-wrong-91b3c5d7"
	st := startStack(t, stack.Config{ClickHouseUser: chUser, ClickHousePassword: chPassword, Logger: logger}, true)

	const acct = "acct_logs"
	for _, tok := range []string{wrongAdminToken, st.APIKey, ""} {
		if a := call(t, "POST", st.LedgerURL+"/v1/accounts/"+acct+"/grants", tok, grantBody("g-bad")); a.status < 401 || a.status > 403 {
			t.Fatalf("grant with a wrong key: %d %s", a.status, a.body)
		}
	}
	if a := call(t, "POST", st.LedgerURL+"/v1/accounts/"+acct+"/grants", st.AdminToken, grantBody("g-logs")); a.status != 202 {
		t.Fatalf("grant: %d %s", a.status, a.body)
	}
	if a := call(t, "POST", st.LedgerURL+"/v1/accounts/"+acct+"/adjustments", st.AdminToken,
		`{"adjustment_id":"adj-logs","amount_micros":-1000,"reason":"goodwill correction"}`); a.status != 202 {
		t.Fatalf("adjustment: %d %s", a.status, a.body)
	}
	for _, tok := range []string{wrongAPIKey, st.AdminToken, ""} {
		if a := call(t, "POST", st.AdmitterURL+"/v1/admit", tok, admitBody("r-bad", acct)); a.status < 401 || a.status > 403 {
			t.Fatalf("admit with a wrong key: %d %s", a.status, a.body)
		}
	}
	// A malformed body and an unknown request: error paths that log.
	if a := call(t, "POST", st.AdmitterURL+"/v1/admit", st.APIKey, `{"account_id":`); a.status != 400 {
		t.Fatalf("malformed admit: %d %s", a.status, a.body)
	}
	if a := call(t, "POST", st.AdmitterURL+"/v1/finish", st.APIKey, finishBody("r-unknown")); a.status < 400 || a.status >= 500 {
		t.Fatalf("finish of an unknown request: %d %s", a.status, a.body)
	}
	for i := 0; i < 3; i++ {
		rid := admitWhenFunded(t, st, acct, fmt.Sprintf("r-logs-%d", i))
		if a := call(t, "POST", st.AdmitterURL+"/v1/finish", st.APIKey, finishBody(rid)); a.status != 200 {
			t.Fatalf("finish: %d %s", a.status, a.body)
		}
	}
	for _, pw := range []string{"", wrongCHPassword} {
		if a := chQuery(t, st.ClickHouse, st.ClickHouseDatabase, chUser, pw, "SELECT 1"); a.status == 200 {
			t.Fatalf("ClickHouse answered password %q", pw)
		}
	}
	// A second sink with a wrong ClickHouse password fails to start; its error is logged the
	// way `tallyctl run` and cmd/sink log a failed service.
	sc := sink.DefaultConfig()
	sc.Brokers, sc.TopicPrefix, sc.ListenAddr, sc.GroupID = strings.Join(st.Brokers, ","), strings.TrimSuffix(st.Topics.Events, "events"), "127.0.0.1:0", "wrong-password-sink"
	sc.ClickHouse.Addr, sc.ClickHouse.Database = strings.TrimPrefix(st.ClickHouse, "http://"), st.ClickHouseDatabase
	sc.ClickHouse.User, sc.ClickHouse.Password = chUser, wrongCHPassword
	sc.Detect.IntervalMs = 0
	bad, err := sink.New(sc, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = bad.Run(ctx)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("sink with a wrong ClickHouse password: %v (ctx %v)", err, ctx.Err())
	}
	logger.Error("sink failed", "err", err)
	st.Close() // flush the shutdown logs too

	logs := buf.String()
	// The logs hold the paths that handle secrets: refused keys on both APIs (DEBUG) and the
	// failed ClickHouse authentication.
	for _, want := range []string{"AUTHENTICATION_FAILED", `"admitter ready"`, `"msg":"api key refused"`, `"msg":"admin token refused"`} {
		if !strings.Contains(logs, want) {
			t.Fatalf("the logs lack %s (%d bytes): %.3000s", want, len(logs), logs)
		}
	}
	for name, secret := range map[string]string{"API key": st.APIKey, "admin token": st.AdminToken, "ClickHouse password": chPassword,
		"wrong API key": wrongAPIKey, "wrong admin token": wrongAdminToken, "wrong ClickHouse password": wrongCHPassword} {
		if i := strings.Index(logs, secret); i >= 0 {
			t.Errorf("the %s appears in the logs: …%s…", name, logs[max(0, i-300):min(len(logs), i+len(secret)+100)])
		}
	}
	t.Logf("%d bytes, %d lines of logs checked", len(logs), strings.Count(logs, "\n"))
	if testing.Verbose() {
		t.Log(logs)
	}
}
