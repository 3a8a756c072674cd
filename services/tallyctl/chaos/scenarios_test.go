//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/ledger/engine"
	"github.com/tallyhq/tally/shared/events"
)

// eventsTarget is scenario 1's run length in acknowledged answers (CHAOS_EVENTS, default 50000).
func eventsTarget() int64 {
	if s := os.Getenv("CHAOS_EVENTS"); s != "" {
		if v, err := strconv.ParseInt(s, 10, 64); err == nil && v > 0 {
			return v
		}
	}
	return 50_000
}

// ledgerKillsMin is how many times scenario 1 kills the ledger.
const ledgerKillsMin = 10

// ledgerRunRate paces scenario 1 (CHAOS_RATE, workload operations per second, default 250;
// a request is one operation and two answers): 50,000 answers then take about two minutes,
// long enough for ten kill-and-rejoin cycles (a rejoin waits for the killed member's 10 s
// session to expire).
func ledgerRunRate() int {
	if s := os.Getenv("CHAOS_RATE"); s != "" {
		if v, err := strconv.Atoi(s); err == nil && v >= 0 {
			return v
		}
	}
	return 250
}

func errorsLine(rec *Record) string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var parts []string
	for k, v := range rec.Errors {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(parts)
	return fmt.Sprintf("answers: %d allowed, %d denied, %d finished, %d abandoned, %d grants, %d tier changes; errors {%s}",
		len(rec.Allowed), len(rec.Denied), len(rec.Finished), len(rec.Abandoned), len(rec.Grants), len(rec.Updates), strings.Join(parts, ", "))
}

// TestLedgerKilled is scenario 1: the ledger is SIGKILLed at random points at least ten
// times during a run of at least 50,000 events; balances, journal and reconcile must agree
// with the reference, with no duplicate journal entry in ClickHouse.
func TestLedgerKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	h := NewHarness(t)
	led := h.Ledger()
	snk := h.Sink()
	adm := h.Admitter("a1", 1)
	w := &Workload{H: h, Name: "s1", Seed: seed(), Mix: DefaultMix, Workers: 24, Target: eventsTarget(),
		Admitters: []*Proc{adm}, Ledger: led, RatePerSec: ledgerRunRate()}
	if err := w.Setup(ctx, 40); err != nil {
		t.Fatal(err)
	}
	s := Summary{Scenario: "1 ledger SIGKILL", OverAdmission: "n/a (single admitter)"}
	done := make(chan struct{})
	var ran time.Duration
	var killsDuring int
	go func() {
		defer close(done)
		t0 := time.Now()
		_ = w.Run(ctx)
		ran = time.Since(t0)
		killsDuring = led.KillCount()
	}()
	// Kill at random points: a random 0.2-3 s after the ledger became ready again (mid-fold,
	// mid-publish or mid-persist), and some while it is still restoring. The kills go on
	// while the ledger catches up after the workload ends.
	rng := rand.New(rand.NewPCG(seed(), 99))
	start := time.Now()
	for led.KillCount() < ledgerKillsMin {
		if rng.IntN(4) > 0 {
			if err := led.WaitReady(readyTimeout); err != nil {
				t.Fatalf("%v\n%s", err, led.Tail(40))
			}
		}
		time.Sleep(time.Duration(200+rng.IntN(2800)) * time.Millisecond)
		led.Kill()
		h.Start(led)
	}
	<-done
	t.Logf("workload: %d acknowledged answers in %s (kills done after %s); %s", w.Rec.Acked(), ran.Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond), errorsLine(w.Rec))
	if err := led.WaitReady(readyTimeout); err != nil {
		t.Fatalf("%v\n%s", err, led.Tail(40))
	}
	ref := Verify(t, ctx, h, w.Rec, VerifyOptions{Ledger: led, Sink: true}, &s)
	s.Faults = fmt.Sprintf("%d ledger SIGKILLs (%d while the workload ran, the rest while the ledger caught up)", led.Kills, killsDuring)
	s.Notes = append(s.Notes, errorsLine(w.Rec), fmt.Sprintf("journal entries %d, accounts %d", len(ref.Entries), len(ref.Balances)))
	if s.Events < eventsTarget() {
		t.Errorf("only %d events in the run, want at least %d", s.Events, eventsTarget())
	}
	if !snk.Running() {
		t.Errorf("sink stopped:\n%s", snk.Tail(30))
	}
	Report(t, s)
}

// TestSinkKilled is scenario 2: the sink is SIGKILLed mid-batch repeatedly; usage_events
// must hold exactly the distinct events (no gaps, no duplicates) and the journal exactly the
// reference's entries.
func TestSinkKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h := NewHarness(t)
	led := h.Ledger()
	// Larger batches (500 ms) so that most kills land while a batch is being built or inserted.
	snk := h.Sink("SINK_BATCH_WAIT_MS=500")
	adm := h.Admitter("a1", 1)
	w := &Workload{H: h, Name: "s2", Seed: seed() + 2, Mix: DefaultMix, Workers: 16, Target: 12_000,
		Admitters: []*Proc{adm}, Ledger: led}
	if err := w.Setup(ctx, 20); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	rng := rand.New(rand.NewPCG(seed(), 2))
	const kills = 8
	for snk.KillCount() < kills {
		if err := snk.WaitReady(readyTimeout); err != nil {
			t.Fatalf("%v\n%s", err, snk.Tail(40))
		}
		time.Sleep(time.Duration(300+rng.IntN(1500)) * time.Millisecond)
		snk.Kill()
		h.Start(snk)
	}
	<-done
	if err := snk.WaitReady(readyTimeout); err != nil {
		t.Fatalf("%v\n%s", err, snk.Tail(40))
	}
	s := Summary{Scenario: "2 sink SIGKILL mid-batch", Faults: fmt.Sprintf("%d sink SIGKILLs", snk.Kills), OverAdmission: "n/a (single admitter)"}
	Verify(t, ctx, h, w.Rec, VerifyOptions{Ledger: led, Sink: true}, &s)
	var raw, distinct uint64
	if err := h.Conn.QueryRow(ctx, `SELECT count(), uniqExact(event_id) FROM usage_events`).Scan(&raw, &distinct); err == nil {
		s.Notes = append(s.Notes, fmt.Sprintf("usage_events without FINAL: %d rows, %d distinct ids (re-inserted copies not yet merged: %d)", raw, distinct, raw-distinct))
	}
	s.Notes = append(s.Notes, errorsLine(w.Rec))
	Report(t, s)
}

// TestAdmitterKilled is scenario 3: the admitter is SIGKILLed with requests in flight. No
// request answered allowed may lack its durable request.started; every allowed request
// whose finish was not acknowledged is either finished in the log or expired by the ledger,
// and no hold remains.
func TestAdmitterKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h := NewHarness(t)
	led := h.Ledger()
	snk := h.Sink()
	adm := h.Admitter("a1", 1)
	mix := DefaultMix
	mix.VideoPermille = 300 // long requests: many in flight at each kill
	w := &Workload{H: h, Name: "s3", Seed: seed() + 3, Mix: mix, Workers: 32, Target: 10_000,
		Admitters: []*Proc{adm}, Ledger: led, FinishDelayMax: 300 * time.Millisecond}
	if err := w.Setup(ctx, 20); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	rng := rand.New(rand.NewPCG(seed(), 3))
	const kills = 5
	for adm.KillCount() < kills {
		time.Sleep(time.Duration(1000+rng.IntN(2000)) * time.Millisecond)
		adm.Kill()
		h.StartReady(adm)
	}
	<-done
	s := Summary{Scenario: "3 admitter SIGKILL in flight", Faults: fmt.Sprintf("%d admitter SIGKILLs", adm.Kills), OverAdmission: "n/a (single admitter)"}
	ref := Verify(t, ctx, h, w.Rec, VerifyOptions{Ledger: led, Sink: true}, &s)
	// Every allowed request without an acknowledged finish: finished in the log (the answer
	// was lost) or expired by the ledger (request.expired in the journal).
	expired, err := expiredRequests(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	w.Rec.mu.Lock()
	var open, fin, exp int
	for rid := range w.Rec.Allowed {
		if _, ok := w.Rec.Finished[rid]; ok {
			continue
		}
		open++
		switch _, f := ref.Finished[rid]; {
		case f:
			fin++
		case expired[rid]:
			exp++
		default:
			t.Errorf("request %s was allowed, never finished, and never expired", rid)
		}
	}
	w.Rec.mu.Unlock()
	s.Notes = append(s.Notes, fmt.Sprintf("allowed without an acknowledged finish: %d (abandoned by design or cut by a kill): %d finished in the log, %d expired and released", open, fin, exp),
		errorsLine(w.Rec))
	if !led.Running() || !snk.Running() {
		t.Errorf("ledger or sink stopped")
	}
	Report(t, s)
}

// expiredRequests reads the request ids of the journal's request.expired events.
func expiredRequests(ctx context.Context, h *Harness) (map[string]bool, error) {
	out := map[string]bool{}
	err := engine.ReadAll(ctx, h.Kafka.Brokers, h.Kafka.Topics.Journal, func(m kafka.Message) error {
		ev, err := events.Decode(m.Value)
		if err != nil {
			return err
		}
		if x, ok := ev.Payload.(events.RequestExpired); ok {
			out[x.RequestID] = true
		}
		return nil
	})
	return out, err
}

// kafkaScript runs deployments/kafka.sh with one command.
func kafkaScript(t *testing.T, cmd string) {
	t.Helper()
	c := exec.Command(filepath.Join("..", "..", "..", "deployments", "kafka.sh"), cmd)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Errorf("kafka.sh %s: %v\n%s", cmd, err, out)
	}
}

// TestKafkaRestart is scenario 4 (real Kafka only): the broker is stopped and restarted
// mid-run. The admitter answers 503 unavailable during the outage and recovers by itself;
// the ledger and sink resume; nothing is lost.
func TestKafkaRestart(t *testing.T) {
	if os.Getenv("KAFKA_BROKERS") == "" {
		t.Skip("scenario 4 stops and restarts a real broker with deployments/kafka.sh: set KAFKA_BROKERS=127.0.0.1:9092")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h := NewHarness(t)
	// Whatever happens, the shared broker is running again when the test ends.
	t.Cleanup(func() { kafkaScript(t, "start") })
	led := h.Ledger()
	snk := h.Sink()
	adm := h.Admitter("a1", 1)
	w := &Workload{H: h, Name: "s4", Seed: seed() + 4, Mix: DefaultMix, Workers: 8, Admitters: []*Proc{adm}, Ledger: led}
	if err := w.Setup(ctx, 10); err != nil {
		t.Fatal(err)
	}
	wctx, wstop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	time.Sleep(5 * time.Second)
	stopAt := time.Now()
	kafkaScript(t, "stop")
	time.Sleep(8 * time.Second)
	w.Rec.mu.Lock()
	unavOutage := w.Rec.Unavailable
	w.Rec.mu.Unlock()
	startAt := time.Now()
	kafkaScript(t, "start")
	upAt := time.Now()
	// Recovery by itself: allowed answers resume without restarting anything.
	var recovered time.Duration
	err := eventually(ctx, 120*time.Second, func() error {
		w.Rec.mu.Lock()
		defer w.Rec.mu.Unlock()
		if w.Rec.LastAllowed.After(upAt) {
			recovered = w.Rec.LastAllowed.Sub(upAt)
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Errorf("the admitter did not allow a request within 120 s of the broker's restart")
	}
	time.Sleep(5 * time.Second)
	wstop()
	<-done
	if unavOutage == 0 {
		t.Errorf("no 503 unavailable answer during the outage")
	}
	for _, p := range []*Proc{led, snk, adm} {
		if !p.Running() || p.Starts != 1 {
			t.Errorf("%s did not survive the outage by itself (running %v, starts %d)\n%s", p.Name, p.Running(), p.Starts, p.Tail(30))
		}
	}
	if err := led.WaitReady(readyTimeout); err != nil {
		t.Errorf("ledger not ready again after the outage: %v", err)
	}
	if err := snk.WaitReady(readyTimeout); err != nil {
		t.Errorf("sink not ready again after the outage: %v", err)
	}
	s := Summary{Scenario: "4 Kafka broker stop/start", OverAdmission: "n/a (single admitter)",
		Faults: fmt.Sprintf("broker down %s (stop took %s, start took %s)", upAt.Sub(stopAt).Round(time.Second),
			startAt.Sub(stopAt).Round(time.Second)-8*time.Second, upAt.Sub(startAt).Round(time.Second))}
	Verify(t, ctx, h, w.Rec, VerifyOptions{Ledger: led, Sink: true}, &s)
	for _, p := range []*Proc{led, snk, adm} {
		if !p.Running() {
			t.Errorf("%s exited after the outage (checked after verification)", p.Name)
			s.Notes = append(s.Notes, p.Name+" exited after the outage")
		}
	}
	s.Notes = append(s.Notes, fmt.Sprintf("admit 503 unavailable answers: %d during the outage, %d in all; first allowed answer %s after the broker answered again",
		unavOutage, w.Rec.Unavailable, recovered.Round(time.Millisecond)), errorsLine(w.Rec))
	Report(t, s)
}
