package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/services/tallyctl/internal/runinfo"
	"github.com/tallyhq/tally/services/tallyctl/internal/secretfile"
	"github.com/tallyhq/tally/services/tallyctl/internal/waitfor"
	"github.com/tallyhq/tally/services/tallyctl/stack"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/events"
)

// execEnv makes the test binary act as tallyctl itself (TestMain), so a test can run
// `tallyctl run` as a separate process, stop it, and start it again: chDB runs one engine per
// process, and a restart is a new process.
const execEnv = "TALLYCTL_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(execEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := realMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// tallyctlProc is one `tallyctl run` process.
type tallyctlProc struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan error
}

// childEnv is the test's environment less the settings that would point tallyctl elsewhere,
// with CHDB_LIB_PATH found as the tests find it.
func childEnv(extra ...string) []string {
	env := []string{}
	if lib, err := chembedtest.LibPath(); err == nil {
		env = append(env, "CHDB_LIB_PATH="+lib)
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name == "KAFKA_BROKERS" || name == "CHDB_LIB_PATH" || strings.HasPrefix(name, "TALLY_") || strings.HasPrefix(name, "CLICKHOUSE_") ||
			strings.HasSuffix(name, "_LISTEN_ADDR") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// tallyctl runs the CLI in a child process and returns its output.
func tallyctl(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(env, execEnv+"=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func startRun(t *testing.T, dataDir, brokers string) (*tallyctlProc, runinfo.Info) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "run", "-data-dir", dataDir, "-kafka-brokers", brokers,
		"-admitter-addr", "127.0.0.1:0", "-ledger-addr", "127.0.0.1:0", "-sink-addr", "127.0.0.1:0",
		"-clickhouse-addr", "127.0.0.1:0")
	cmd.Env = append(childEnv(), execEnv+"=1")
	p := &tallyctlProc{cmd: cmd, out: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	var info runinfo.Info
	deadline := time.Now().Add(3 * time.Minute)
	for {
		select {
		case err := <-p.done:
			t.Fatalf("tallyctl run exited before it was ready: %v\n%s", err, p.out)
		default:
		}
		i, ok, err := runinfo.Read(dataDir)
		if err != nil {
			t.Fatal(err)
		}
		if ok && i.PID == cmd.Process.Pid {
			info = i
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tallyctl run wrote no run.json in 3 minutes:\n%s", p.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p, info
}

// stop sends SIGINT, as Ctrl-C does, and waits for a clean exit.
func (p *tallyctlProc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("tallyctl run exited with %v:\n%s", err, p.out)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("tallyctl run did not stop:\n%s", p.out)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// privateKafka controls a broker of the test's own, its data in home (as make run's is in
// the data directory), through the project's deployments/kafka.sh.
func privateKafka(t *testing.T, home string) (brokers string, ctl func(string)) {
	t.Helper()
	port, cport := os.Getenv("TALLY_TEST_KAFKA_PORT"), os.Getenv("TALLY_TEST_KAFKA_CONTROLLER_PORT")
	if port == "" {
		port, cport = freePort(t), freePort(t)
	}
	script, err := filepath.Abs("../../../../deployments/kafka.sh")
	if err != nil {
		t.Fatal(err)
	}
	ctl = func(verb string) {
		t.Helper()
		cmd := exec.Command(script, verb)
		cmd.Env = append(os.Environ(), "KAFKA_HOME="+home, "KAFKA_PORT="+port, "KAFKA_CONTROLLER_PORT="+cport, "KAFKA_HEAP=384m")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kafka.sh %s: %v\n%s", verb, err, out)
		}
		t.Logf("kafka.sh %s: %s", verb, bytes.TrimSpace(out))
	}
	ctl("start")
	t.Cleanup(func() { ctl("stop") })
	return "127.0.0.1:" + port, ctl
}

// snapshot is everything that must survive a restart.
type snapshot struct {
	Account map[string]any
	// Statement is the account's statement from the journal topic (tallyctl statement, which
	// finds the stack through run.json): every journal line, opening and closing balance.
	Statement string
	// ClickHouse: row counts, and the journal lines the sink stored.
	Rows      map[string]uint64
	CHEntries string
	KeysFile  string
	KeysMode  os.FileMode
}

func httpJSON(method, u, token string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		return 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, u, resp.StatusCode, raw)
	}
	if out != nil {
		return resp.StatusCode, json.Unmarshal(raw, out)
	}
	return resp.StatusCode, nil
}

// chQuery runs q on the stack's ClickHouse as tallyctl's other commands log in: run.json's
// CLICKHOUSE_USER (the read-only analyst) with the keys file's CLICKHOUSE_PASSWORD.
func chQuery(info runinfo.Info, q string) (string, error) {
	keys, err := secretfile.Open(info.KeysFile)
	if err != nil {
		return "", err
	}
	pw, _ := keys.Lookup(stack.ClickHouseAnalystPasswordName)
	u := "http://" + info.Env["CLICKHOUSE_ADDR"] + "/?database=" + url.QueryEscape(info.Env["CLICKHOUSE_DATABASE"]) + "&query=" + url.QueryEscape(q)
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(info.Env["CLICKHOUSE_USER"], pw)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("%s: %d %s", q, resp.StatusCode, b)
	}
	return strings.TrimSpace(string(b)), nil
}

func chCount(info runinfo.Info, q string) (uint64, error) {
	s, err := chQuery(info, q)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(s, 10, 64)
}

func chString(t *testing.T, info runinfo.Info, q string) string {
	t.Helper()
	s, err := chQuery(info, q)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func takeSnapshot(t *testing.T, dataDir string, info runinfo.Info, token, acct string) snapshot {
	t.Helper()
	s := snapshot{Rows: map[string]uint64{}}
	if _, err := httpJSON("GET", info.Env["TALLY_LEDGER_URL"]+"/v1/accounts/"+acct, token, nil, &s.Account); err != nil {
		t.Fatal(err)
	}
	// The partition's log time moves on by itself (the ledger's clock ticks into idle
	// partitions), so the watermark is no part of the account's state; its offset is.
	if pos, ok := s.Account["position"].(map[string]any); ok {
		delete(pos, "watermark")
	}
	out, err := tallyctl(t, childEnv("TALLY_DATA_DIR="+dataDir), "statement", "-account", acct, "-format", "json", "-to", "2100-01-01T00:00:00Z")
	if err != nil {
		t.Fatalf("tallyctl statement: %v\n%s", err, out)
	}
	s.Statement = out
	s.CHEntries = chString(t, info, "SELECT arrayStringConcat(arraySort(groupArray(entry_id || ':' || toString(amount_micros))), ',') FROM ledger_entries FINAL WHERE account_id = '"+acct+"'")
	for _, table := range []string{"usage_events", "ledger_entries", "schema_migrations"} {
		n, err := chCount(info, "SELECT count() FROM "+table)
		if err != nil {
			t.Fatal(err)
		}
		s.Rows[table] = n
	}
	b, err := os.ReadFile(info.KeysFile)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(info.KeysFile)
	s.KeysFile, s.KeysMode = string(b), st.Mode().Perm()
	return s
}

// admitFinish admits a 10 s 1080p video (a 4-credit hold) and finishes it at 8 s (3.2 credits).
// admitFinish admits a 10 s 1080p video (4 credits) and finishes it at 8 s (3.2 credits
// charged). It returns what the credits paid: the free tier's 5-hour allowance (2 credits)
// pays its share first, and how much of it is left depends on the window.
func admitFinish(t *testing.T, ctx context.Context, info runinfo.Info, apiKey, acct, rid string) int64 {
	t.Helper()
	cl, err := client.New(client.Config{BaseURL: info.Env["TALLY_ADMITTER_URL"], APIKey: apiKey})
	if err != nil {
		t.Fatal(err)
	}
	attempt := 0
	var id string
	waitfor.Eventually(t, "admit once the balance reached the admitter", time.Minute, func() error {
		attempt++
		id = fmt.Sprintf("%s-%d", rid, attempt) // a denial is an answer too: a new id each time
		_, err := cl.Admit(ctx, api.AdmitRequest{RequestID: id, AccountID: acct, Endpoint: "sora.video",
			Estimate: events.Units{VideoSeconds: 10, Resolution: "1080p"}})
		var denied *client.DeniedError
		if errors.As(err, &denied) && denied.Reason == client.ReasonInsufficientCredits {
			return err
		}
		if err != nil {
			t.Fatalf("admit: %v", err)
		}
		return nil
	})
	fin, err := cl.Finish(ctx, api.FinishRequest{RequestID: id, Status: events.StatusSucceeded,
		Usage: events.Units{VideoSeconds: 8, Resolution: "1080p"}, DurationMs: 1000})
	if err != nil || fin.ChargedMicros != 3_200_000 || fin.AllowanceMicros+fin.CreditsMicros != 3_200_000 {
		t.Fatalf("finish: %+v, %v", fin, err)
	}
	return fin.CreditsMicros
}

func waitAvailable(t *testing.T, info runinfo.Info, token, acct string, want int64) {
	t.Helper()
	waitfor.Eventually(t, "the ledger's balance", time.Minute, func() error {
		var v struct {
			AvailableMicros int64 `json:"available_micros"`
			HeldMicros      int64 `json:"held_micros"`
		}
		if _, err := httpJSON("GET", info.Env["TALLY_LEDGER_URL"]+"/v1/accounts/"+acct, token, nil, &v); err != nil {
			return err
		}
		if v.AvailableMicros != want || v.HeldMicros != 0 {
			return fmt.Errorf("available %d, held %d; want %d, 0", v.AvailableMicros, v.HeldMicros, want)
		}
		return nil
	})
}

// TestRunKeepsEverythingAcrossRestarts is make run's shape: a real Kafka started by
// deployments/kafka.sh with its log in the data directory, and `tallyctl run` on that data
// directory. Grant, admit, finish; stop tallyctl and Kafka; start both again: the balance,
// the journal, the ClickHouse rows and the keys (same file, mode 0600, still accepted) are
// all there, the finance commands find the stack through run.json, and the pipeline goes on.
func TestRunKeepsEverythingAcrossRestarts(t *testing.T) {
	if os.Getenv("KAFKA_BROKERS") == "" && os.Getenv("TALLY_TEST_DURABLE") == "" {
		t.Skip("needs Java and Maven for a private Apache Kafka (deployments/kafka.sh): set KAFKA_BROKERS (CI does) or TALLY_TEST_DURABLE=1")
	}
	dir := t.TempDir()
	brokers, kafka := privateKafka(t, filepath.Join(dir, "kafka"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const acct = "acct_restart"

	p, info := startRun(t, dir, brokers)
	keys, err := secretfile.Open(info.KeysFile)
	if err != nil {
		t.Fatal(err)
	}
	token, _ := keys.Lookup("TALLY_ADMIN_TOKEN")
	apiKey, _ := keys.Lookup("TALLY_API_KEY")
	if token == "" || apiKey == "" {
		t.Fatalf("keys file %s lacks the keys: %v", info.KeysFile, keys.Names())
	}
	if _, err := httpJSON("POST", info.Env["TALLY_LEDGER_URL"]+"/v1/accounts/"+acct+"/grants", token,
		map[string]any{"grant_id": "g-restart", "amount_micros": 50_000_000, "source": "purchase"}, nil); err != nil {
		t.Fatal(err)
	}
	paid := admitFinish(t, ctx, info, apiKey, acct, "req-before")
	waitAvailable(t, info, token, acct, 50_000_000-paid)
	// The sink has stored every event and journal line before the stop.
	waitfor.Eventually(t, "rows in ClickHouse", 2*time.Minute, func() error {
		for q, want := range map[string]uint64{
			"SELECT count() FROM usage_events WHERE account_id = '" + acct + "' AND type = 'tally.request.finished.v1'": 1,
			"SELECT count() FROM ledger_entries WHERE account_id = '" + acct + "'":                                      1,
		} {
			n, err := chCount(info, q)
			if err != nil {
				return err
			}
			if n < want {
				return fmt.Errorf("%s: %d", q, n)
			}
		}
		return nil
	})
	// Let the sink's last batch settle, then take what must survive.
	time.Sleep(time.Second)
	before := takeSnapshot(t, dir, info, token, acct)
	// The journal: the ledger's seven lines (grant 2, hold 2, settlement 3) in the statement
	// and in ClickHouse.
	var page struct {
		Entries []struct {
			EntryID string `json:"entry_id"`
		} `json:"entries"`
	}
	if _, err := httpJSON("GET", info.Env["TALLY_LEDGER_URL"]+"/v1/accounts/"+acct+"/entries?limit=500", token, nil, &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) != 7 {
		t.Fatalf("the ledger's journal has %d lines, want 7", len(page.Entries))
	}
	for _, e := range page.Entries {
		if !strings.Contains(before.Statement, e.EntryID) || !strings.Contains(before.CHEntries, e.EntryID) {
			t.Fatalf("journal line %s missing from the statement or ClickHouse:\n%s\n%s", e.EntryID, before.Statement, before.CHEntries)
		}
	}
	if before.KeysMode != secretfile.Mode || !strings.Contains(before.Statement, fmt.Sprint(50_000_000-paid)) || before.Rows["usage_events"] == 0 || before.Rows["ledger_entries"] != 7 {
		t.Fatalf("before the restart: %+v", before)
	}

	// Stop everything, as Ctrl-C on make run does, and start it again.
	p.stop(t)
	if _, ok, _ := runinfo.Read(dir); ok {
		t.Fatal("run.json still names a running stack after the stop")
	}
	kafka("stop")
	kafka("start")
	_, info2 := startRun(t, dir, brokers)
	if info2.KeysFile != info.KeysFile {
		t.Fatalf("keys file moved: %s, then %s", info.KeysFile, info2.KeysFile)
	}
	// The ledger restores its state from the log: the old token still works, and nothing was
	// lost or counted twice.
	waitAvailable(t, info2, token, acct, 50_000_000-paid)
	waitfor.Eventually(t, "the same state after the restart", time.Minute, func() error {
		after := takeSnapshot(t, dir, info2, token, acct)
		if fmt.Sprint(after) != fmt.Sprint(before) {
			return fmt.Errorf("\nbefore %+v\nafter  %+v", before, after)
		}
		return nil
	})

	// reconcile finds the restarted stack through run.json too (no settings given): the
	// replay of the log, the live ledger and ClickHouse agree.
	out, err := tallyctl(t, childEnv("TALLY_DATA_DIR="+dir), "reconcile")
	if err != nil || !strings.Contains(out, "reconcile: OK") {
		t.Fatalf("tallyctl reconcile: %v\n%s", err, out)
	}

	// And it goes on: the kept API key admits against the restored balance.
	paid += admitFinish(t, ctx, info2, apiKey, acct, "req-after")
	waitAvailable(t, info2, token, acct, 50_000_000-paid)
}
