package ledger_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/ledger/internal/gen"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// ledgerProc is the ledger binary running as a child process, so that it can be killed
// with SIGKILL at an arbitrary point: no deferred code, no clean shutdown.
type ledgerProc struct {
	cmd  *exec.Cmd
	base string
}

func buildLedger(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ledger")
	out, err := exec.Command("go", "build", "-o", bin, "./cmd/ledger").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func startProc(t *testing.T, bin string, c *kafkatest.Cluster, extraEnv ...string) *ledgerProc {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"KAFKA_BROKERS="+strings.Join(c.Brokers, ","), "TALLY_TOPIC_PREFIX="+c.Prefix,
		"LEDGER_LISTEN_ADDR=127.0.0.1:0", "LEDGER_ADMIN_KEYS=ops:"+httpx.HashSecret(adminToken),
		"LEDGER_GROUP="+c.Group("ledger"), "LEDGER_ENSURE_TOPICS=false", "LEDGER_RETRY_BACKOFF_MS=100",
		// Small batches: many publish/persist/commit cycles for a kill to land between.
		"LEDGER_BATCH_MAX=200",
		// The logs these tests fold are stamped in the past: a clock tick (wall clock) would
		// move the watermark a month ahead and make the rest of the log too late.
		"LEDGER_TICK_INTERVAL_MS=3600000")
	cmd.Env = append(cmd.Env, extraEnv...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &ledgerProc{cmd: cmd}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "ledger: listening" {
				addr <- line.Addr
			}
			if line.Msg != "ledger: anomaly" {
				procLogMu.Lock()
				procLog = append(procLog, sc.Text())
				procLogMu.Unlock()
			}
		}
	}()
	select {
	case a := <-addr:
		p.base = "http://" + a
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("ledger process did not start listening")
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return p
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("ledger never became ready")
}

var (
	procLogMu sync.Mutex
	procLog   []string
)

// dumpLogsOnFailure prints the child processes' logs (anomalies left out) if t failed.
func dumpLogsOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		procLogMu.Lock()
		defer procLogMu.Unlock()
		for _, l := range procLog {
			t.Log(l)
		}
	})
}

func (p *ledgerProc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(os.Kill); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
}

// TestKillAndRestart streams a long randomized log (duplicates, parked finishes, expiries,
// expiring grants, adjustments) into the events topic while the ledger runs as a child
// process, SIGKILLs it twice mid-stream, restarts it, and then checks that the live ledger,
// a from-scratch replay of the log, the journal topic and reconcile agree to the micro-credit.
func TestKillAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the ledger binary")
	}
	c := kafkatest.Start(t)
	dumpLogsOnFailure(t)
	bin := buildLedger(t)
	log := gen.RandomLog(7, 30_000, 300, time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC), 200)
	p := startProc(t, bin, c)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// About 12 s of traffic, so that both kills land mid-stream.
		for i := 0; i < len(log); i += 1000 {
			produce(t, c, log[i:min(i+1000, len(log))]...)
			time.Sleep(400 * time.Millisecond)
		}
	}()
	for kill := 0; kill < 2; kill++ {
		// Kill only a ledger that has joined the group and restored: kfake (not real Kafka)
		// never expires a member killed between JoinGroup and SyncGroup, which would leave
		// its partitions unassigned. Against real Kafka that case recovers after the
		// session timeout.
		waitReady(t, p.base)
		time.Sleep(time.Duration(300+kill*250) * time.Millisecond)
		p.kill9(t)
		p = startProc(t, bin, c)
	}
	wg.Wait()

	rep := replayBalances(t, c)
	if rep.Events != int64(len(log)) || len(rep.Balances()) == 0 {
		t.Fatalf("replay folded %d events, produced %d", rep.Events, len(log))
	}
	live := finance.HTTPLive(http.DefaultClient, p.base, adminToken)
	var report *finance.Report
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		report, err = finance.Reconcile(context.Background(), rep, live, nil)
		if err != nil {
			t.Fatal(err)
		}
		if report.OK() && report.Moved == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !report.OK() || report.Moved != 0 {
		t.Fatalf("live ledger and replay disagree after kill -9 and restart: %d moved, differences %+v", report.Moved, firstDiffs(report))
	}
	// The journal topic, deduplicated by entry id (re-emitted lines must be identical), adds
	// up to the same balances, and every transaction in it balances.
	journal, err := finance.ReadJournal(context.Background(), c.Brokers, c.Topics)
	if err != nil {
		t.Fatal(err)
	}
	avail, held, tx := map[string]int64{}, map[string]int64{}, map[string]int64{}
	for _, e := range journal {
		tx[e.TransactionID] += e.AmountMicros
		switch e.LedgerAccount {
		case events.LedgerAvailable:
			avail[e.AccountID] += e.AmountMicros
		case events.LedgerHeld:
			held[e.AccountID] += e.AmountMicros
		}
	}
	for id, s := range tx {
		if s != 0 {
			t.Fatalf("transaction %s sums to %d", id, s)
		}
	}
	for _, b := range rep.Balances() {
		if avail[b.AccountID] != b.AvailableMicros || held[b.AccountID] != b.HeldMicros {
			t.Fatalf("account %s: journal available %d held %d, replay %d %d", b.AccountID, avail[b.AccountID], held[b.AccountID], b.AvailableMicros, b.HeldMicros)
		}
	}
	raw := 0
	if err := engineReadAll(context.Background(), c.Brokers, c.Topics.Journal, func(m kafka.Message) error {
		if e, err := events.Decode(m.Value); err == nil && e.Type == events.TypeLedgerEntry {
			raw++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events, %d accounts, %d journal lines (%d ledger.entry messages on the topic: the excess was re-emitted, identically, after the kills), %d transactions: live = replay = journal",
		rep.Events, report.Accounts, len(journal), raw, len(tx))
}

// TestCrashAtEveryWriteStage injects a crash after each write stage of a batch (outputs
// published; account records persisted; snapshot persisted, offset not committed) several
// times while a randomized log streams in. Each crash abandons the generation; the engine
// rejoins and restores from the ledger-state topic. The live ledger must then agree with a
// from-scratch replay, and the journal must add up, with the re-emitted lines identical.
func TestCrashAtEveryWriteStage(t *testing.T) {
	c := kafkatest.Start(t)
	var mu sync.Mutex
	calls := map[string]int{}
	injected := map[string]int{}
	cfg := testConfig(c)
	cfg.BatchMax = 100
	cfg.TickIntervalMs = 3_600_000 // the log is stamped in the past: no wall-clock tick
	cfg.FaultHook = func(stage string) error {
		mu.Lock()
		defer mu.Unlock()
		calls[stage]++
		if calls[stage]%7 == 3 && injected[stage] < 3 {
			injected[stage]++
			return fmt.Errorf("crash after %s", stage)
		}
		return nil
	}
	r := start(t, cfg)
	log := gen.RandomLog(21, 20_000, 200, time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC), 200)
	for i := 0; i < len(log); i += 500 {
		produce(t, c, log[i:min(i+500, len(log))]...)
	}
	rep := replayBalances(t, c)
	live := finance.HTTPLive(http.DefaultClient, r.base, adminToken)
	var report *finance.Report
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		if report, err = finance.Reconcile(context.Background(), rep, live, nil); err != nil {
			t.Fatal(err)
		}
		if report.OK() && report.Moved == 0 && r.svc.Engine().Committed() >= int64(len(log)) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	mu.Lock()
	t.Logf("crashes injected: %v", injected)
	for _, st := range []string{"published", "persisted", "snapshotted"} {
		if injected[st] == 0 {
			t.Errorf("no crash injected after %s", st)
		}
	}
	mu.Unlock()
	if !report.OK() || report.Moved != 0 {
		t.Fatalf("after crashes: %d moved, differences %+v", report.Moved, firstDiffs(report))
	}
	journal, err := finance.ReadJournal(context.Background(), c.Brokers, c.Topics)
	if err != nil {
		t.Fatal(err) // also fails if a re-emitted line differs from the first
	}
	avail := map[string]int64{}
	for _, e := range journal {
		if e.LedgerAccount == events.LedgerAvailable {
			avail[e.AccountID] += e.AmountMicros
		}
	}
	for _, b := range rep.Balances() {
		if avail[b.AccountID] != b.AvailableMicros {
			t.Fatalf("%s: journal %d, replay %d", b.AccountID, avail[b.AccountID], b.AvailableMicros)
		}
	}
	raw := 0
	_ = engineReadAll(context.Background(), c.Brokers, c.Topics.Journal, func(m kafka.Message) error {
		if e, err := events.Decode(m.Value); err == nil && e.Type == events.TypeLedgerEntry {
			raw++
		}
		return nil
	})
	if raw <= len(journal) {
		t.Fatalf("expected re-emitted journal lines after the crashes: %d messages, %d unique", raw, len(journal))
	}
	t.Logf("%d events: live = replay = journal; %d unique journal lines, %d messages (re-emitted identically)", rep.Events, len(journal), raw)
}

func firstDiffs(r *finance.Report) []finance.Difference {
	return r.Differences[:min(3, len(r.Differences))]
}
