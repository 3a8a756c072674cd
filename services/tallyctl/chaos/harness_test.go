//go:build chaos

package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/shared/chembed"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/pricebook"
)

// Bounds of the harness, named so that a slow machine is a setting, not a code change.
const (
	// readyTimeout bounds a service's start until /readyz answers 200. The ledger rejoins its
	// consumer group after a SIGKILL only once the dead member's session (10 s) has expired.
	readyTimeout = 90 * time.Second
	// settleTimeout bounds the wait for the ledger and ClickHouse to reach the reference.
	settleTimeout = 150 * time.Second
	// stopTimeout bounds a graceful stop (SIGTERM) before SIGKILL.
	stopTimeout = 15 * time.Second
	// parkTimeoutMs is the ledger's LEDGER_PARK_TIMEOUT_MS in the suite (its minimum is 1000):
	// finishes of unknown requests settle within the run.
	parkTimeoutMs = 2000
	// holdTimeoutMsMax is the longest hold_timeout_ms of chaosBook.
	holdTimeoutMsMax = 3000
	// Partitions of every topic (kafkatest's).
	partitions = kafkatest.Partitions
	// chaosSource is the CloudEvents source of events the suite produces itself.
	chaosSource = "urn:tally:chaos"
)

// chaosBook is the price book of the suite: the default endpoints with short hold timeouts
// (abandoned requests expire within the run), and tiers that exercise every decision:
// "pro" admits nearly everything on credits, "plus" funds from a small allowance first,
// "free" is rate limited, "team" is small for the several-admitter measurements.
const chaosBook = `{
  "version": "chaos-1",
  "default_tier": "free",
  "endpoints": {
    "sora.video": {"kind": "video", "hold_timeout_ms": 3000, "capacity_inflight": 4096,
      "critical_reserve_permille": 100, "default_model": "sora-2",
      "model_permille": {"sora-2": 1000, "sora-2-pro": 3000}, "micros_per_second": 100000,
      "resolution_permille": {"480p": 1000, "720p": 2000, "1080p": 4000}},
    "codex.responses": {"kind": "code", "hold_timeout_ms": 2000, "capacity_inflight": 8192,
      "critical_reserve_permille": 100, "default_model": "codex",
      "model_permille": {"codex-mini": 500, "codex": 1000}, "micros_per_1k_tokens_in": 1500,
      "micros_per_1k_tokens_out": 6000, "micros_per_compute_second": 200}
  },
  "tiers": {
    "free": {"rate_per_minute": 30, "burst": 3, "max_concurrent": 1,
      "allowance": [{"name": "5h", "length_ms": 18000000, "micros": 2000000}]},
    "plus": {"rate_per_minute": 60000, "burst": 2000, "max_concurrent": 16,
      "allowance": [{"name": "1m", "length_ms": 60000, "micros": 3000000}, {"name": "week", "length_ms": 604800000, "micros": 100000000}]},
    "pro": {"rate_per_minute": 600000, "burst": 20000, "max_concurrent": 64, "allowance": []},
    "team": {"rate_per_minute": 120, "burst": 6, "max_concurrent": 6, "allowance": []}
  }
}`

var (
	binDir  string
	binErr  error
	binOnce sync.Once
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds the three service commands once per test process.
func binaries(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "tally-chaos-bin-")
		if binErr != nil {
			return
		}
		for _, svc := range []string{"admitter", "ledger", "sink"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, svc), "./cmd/"+svc)
			cmd.Dir = filepath.Join("..", "..", svc)
			if out, err := cmd.CombinedOutput(); err != nil {
				binErr = fmt.Errorf("build %s: %v\n%s", svc, err, out)
				return
			}
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// Harness is one scenario's world: fresh topics, a fresh ClickHouse database, secrets, the
// price book file, and the service processes it started.
type Harness struct {
	t          *testing.T
	Kafka      *kafkatest.Cluster
	CH         *chembed.Server
	DB         string
	Conn       clickhouse.Conn
	Dir        string
	BookPath   string
	Book       *pricebook.Book
	APIKey     string
	AdminToken string
	FoldConfig fold.Config
	bins       string

	mu    sync.Mutex
	procs []*Proc
	w     *kafka.Writer
}

// NewHarness prepares a scenario; services are started with Ledger, Sink and Admitter.
func NewHarness(t *testing.T) *Harness {
	t.Helper()
	h := &Harness{t: t, bins: binaries(t), Dir: t.TempDir(), APIKey: "tk_chaos_" + strconv.FormatInt(time.Now().UnixNano(), 36),
		AdminToken: "ta_chaos_" + strconv.FormatInt(time.Now().UnixNano()^0x5eed, 36)}
	h.Kafka = kafkatest.Start(t)
	h.CH = chembedtest.Start(t)
	h.DB = chembedtest.NewDatabase(t, h.CH)
	h.BookPath = filepath.Join(h.Dir, "pricebook.json")
	if err := os.WriteFile(h.BookPath, []byte(chaosBook), 0o644); err != nil {
		t.Fatal(err)
	}
	book, err := pricebook.Load(h.BookPath)
	if err != nil {
		t.Fatalf("chaos price book: %v", err)
	}
	h.Book = book
	lc := h.ledgerConfig()
	h.FoldConfig = lc.FoldConfig(book)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{h.CH.Addr()}, Protocol: clickhouse.HTTP,
		Auth: clickhouse.Auth{Database: h.DB}, ReadTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	h.Conn = conn
	h.w = kafkax.NewWriter(h.Kafka.Brokers, h.Kafka.Topics.Events, kafkax.DefaultWriterConfig)
	t.Cleanup(func() {
		h.stopAll()
		_ = h.w.Close()
		_ = conn.Close()
	})
	return h
}

// ledgerConfig is the ledger's configuration as the suite sets it through the environment
// (ledgerEnv), so that the reference fold uses exactly the ledger's policy.
func (h *Harness) ledgerConfig() ledger.Config {
	lc := ledger.DefaultConfig()
	lc.ParkTimeoutMs = parkTimeoutMs
	lc.PartitionsTotal = partitions
	return lc
}

// Proc is one service subprocess. Restarts keep its port and append to its log.
type Proc struct {
	Name    string
	Addr    string
	bin     string
	env     []string
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	Starts int
	Kills  int
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func (h *Harness) common() []string {
	return []string{"KAFKA_BROKERS=" + strings.Join(h.Kafka.Brokers, ","), "TALLY_TOPIC_PREFIX=" + h.Kafka.Prefix,
		"TALLY_PRICEBOOK_PATH=" + h.BookPath}
}

func (h *Harness) newProc(name, bin string, env []string) *Proc {
	p := &Proc{Name: name, bin: filepath.Join(h.bins, bin), env: env, logPath: filepath.Join(h.Dir, name+".log")}
	h.mu.Lock()
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	return p
}

// Ledger starts the ledger subprocess (with extra environment settings) and waits until it
// is ready.
func (h *Harness) Ledger(extra ...string) *Proc {
	addr := freeAddr(h.t)
	lc := h.ledgerConfig()
	env := append(h.common(), "LEDGER_LISTEN_ADDR="+addr, "LEDGER_ADMIN_KEYS=admin:"+httpx.HashSecret(h.AdminToken),
		"LEDGER_GROUP="+h.Kafka.Group("ledger"), "LEDGER_ENSURE_TOPICS=false",
		"LEDGER_PARK_TIMEOUT_MS="+strconv.FormatInt(lc.ParkTimeoutMs, 10),
		"LEDGER_LOAD_PARTITIONS="+strconv.FormatInt(lc.PartitionsTotal, 10))
	p := h.newProc("ledger", "ledger", append(env, extra...))
	p.Addr = addr
	h.StartReady(p)
	return p
}

// Sink starts the sink subprocess (detector off: its flags would make the workload's
// outcome depend on wall-clock minute boundaries) and waits until it is ready.
func (h *Harness) Sink(extra ...string) *Proc {
	addr := freeAddr(h.t)
	env := append(h.common(), "SINK_LISTEN_ADDR="+addr, "SINK_GROUP_ID="+h.Kafka.Group("sink"),
		"CLICKHOUSE_ADDR="+h.CH.Addr(), "CLICKHOUSE_PROTOCOL=http", "CLICKHOUSE_DATABASE="+h.DB,
		"SINK_DETECT_INTERVAL_MS=0", "SINK_BATCH_WAIT_MS=100")
	p := h.newProc("sink", "sink", append(env, extra...))
	p.Addr = addr
	h.StartReady(p)
	return p
}

// Admitter starts admitter instance id (of instances) and waits until it is ready.
func (h *Harness) Admitter(id string, instances int, extra ...string) *Proc {
	addr := freeAddr(h.t)
	env := append(h.common(), "ADMITTER_LISTEN_ADDR="+addr, "ADMITTER_API_KEYS=chaos:"+httpx.HashSecret(h.APIKey),
		"ADMITTER_INSTANCE_ID="+id, "ADMITTER_INSTANCES="+strconv.Itoa(instances))
	p := h.newProc("admitter-"+id, "admitter", append(env, extra...))
	p.Addr = addr
	h.StartReady(p)
	return p
}

// Start starts p without waiting.
func (h *Harness) Start(p *Proc) {
	h.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	lf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		h.t.Fatal(err)
	}
	fmt.Fprintf(lf, "=== chaos: start #%d at %s\n", p.Starts+1, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		_ = lf.Close()
		h.t.Fatalf("start %s: %v", p.Name, err)
	}
	p.Starts++
	p.cmd = cmd
	exited := make(chan struct{})
	p.exited = exited
	go func() {
		_ = cmd.Wait()
		_ = lf.Close()
		close(exited)
	}()
}

// StartReady starts p and waits for /readyz.
func (h *Harness) StartReady(p *Proc) {
	h.t.Helper()
	h.Start(p)
	if err := p.WaitReady(readyTimeout); err != nil {
		h.t.Fatalf("%v\n%s", err, p.Tail(40))
	}
}

// Running reports whether the process is alive.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	p.mu.Lock()
	p.Kills++
	p.mu.Unlock()
}

// KillCount is the number of SIGKILLs so far.
func (p *Proc) KillCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Kills
}

// Stop asks the process to stop (SIGTERM), then kills it after stopTimeout.
func (p *Proc) Stop() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
}

// Ready reports whether /readyz answers 200.
func (p *Proc) Ready() bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + p.Addr + "/readyz")
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// WaitReady polls /readyz every 50 ms until 200, the process exits, or d passes.
func (p *Proc) WaitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if p.Ready() {
			return nil
		}
		if !p.Running() {
			return fmt.Errorf("%s exited before it was ready", p.Name)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s", p.Name, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Tail returns the last n lines of the process log.
func (p *Proc) Tail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- %s log (last %d lines) ---\n%s", p.Name, len(lines), strings.Join(lines, "\n"))
}

func (h *Harness) stopAll() {
	h.mu.Lock()
	procs := append([]*Proc(nil), h.procs...)
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop() }()
	}
	wg.Wait()
	if h.t.Failed() || os.Getenv("CHAOS_KEEP_LOGS") != "" {
		// Full logs go to .out/chaos-logs/<test>/ at the repo root for diagnosis.
		dir := filepath.Join("..", "..", "..", ".out", "chaos-logs", strings.ReplaceAll(h.t.Name(), "/", "_"))
		_ = os.MkdirAll(dir, 0o755)
		for _, p := range procs {
			if b, err := os.ReadFile(p.logPath); err == nil {
				_ = os.WriteFile(filepath.Join(dir, p.Name+".log"), b, 0o644)
			}
			h.t.Log(p.Tail(60))
		}
		h.t.Logf("full service logs in %s", dir)
	}
}

// Admin calls the ledger's admin API and decodes a 2xx JSON answer into out.
func (h *Harness) Admin(ctx context.Context, ledgerAddr, method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+ledgerAddr+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+h.AdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := adminClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: decode %s: %w", method, path, raw, err)
		}
	}
	return resp.StatusCode, nil
}

var adminClient = &http.Client{Timeout: 10 * time.Second}

// partitionOf is the events-topic partition of an account (kafkax writers use Murmur2).
func partitionOf(account string) int {
	return (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(account)}, 0, 1, 2, 3)
}

// tickAccounts returns one account id per partition.
func tickAccounts() []string {
	out := make([]string, partitions)
	found := 0
	for i := 0; found < partitions; i++ {
		id := "chaos-tick-" + strconv.Itoa(i)
		if p := partitionOf(id); out[p] == "" {
			out[p] = id
			found++
		}
	}
	return out
}

// Tick produces one account.updated per partition stamped now: the ledger's clock is the
// log (each partition's watermark), so holds, grants and parked finishes due before now are
// expired when it folds these.
func (h *Harness) Tick(ctx context.Context) error {
	var msgs []kafka.Message
	for _, id := range tickAccounts() {
		ev, err := events.New(chaosSource, time.Now(), events.AccountUpdated{AccountID: id, Tier: "free", Priority: events.PriorityStandard})
		if err != nil {
			return err
		}
		v, _ := ev.Encode()
		msgs = append(msgs, kafka.Message{Key: []byte(id), Value: v})
	}
	return h.Produce(ctx, msgs...)
}

// Produce writes raw messages to the events topic, acks=all.
func (h *Harness) Produce(ctx context.Context, msgs ...kafka.Message) error {
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if err = h.w.WriteMessages(ctx, msgs...); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("chaos: produce %d messages: %w", len(msgs), err)
}

// eventually polls f every 250 ms until it returns nil or d passes, returning the last error.
func eventually(ctx context.Context, d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")
