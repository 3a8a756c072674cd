//go:build chaos

package chaos

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/shared/events"
)

// The load benchmark: ledger, sink and one admitter as subprocesses
// against Kafka (real when KAFKA_BROKERS is set) and the embedded ClickHouse endpoint; an
// open-loop generator admits (and finishes) requests at a fixed rate; a sampler records,
// every second, the admit latency, the consumer-group lag of the ledger and the sink and the
// RSS of every process; probe requests on dedicated accounts measure the end-to-end
// freshness. It writes .out/bench/load-<timestamp>.md and .png at the repo root.
//
// It runs only with TALLY_LOAD=1 (make bench):
//
//	cd services/tallyctl && TALLY_LOAD=1 KAFKA_BROKERS=127.0.0.1:9092 \
//	  go test -tags chaos -run TestLoad -count=1 -timeout 20m -v ./chaos/

// loadConfig is the benchmark's settings, read from the environment.
type loadConfig struct {
	// RatePerSec is the offered admit rate (LOAD_RATE, default 2000, 1..100000).
	RatePerSec int
	// Seconds is the length of the load (LOAD_SECONDS, default 60, 1..3600).
	Seconds int
	// Accounts is the number of pre-granted load accounts (LOAD_ACCOUNTS, default 200, 1..100000).
	Accounts int
	// VideoPermille is the share of video-like requests, the rest code-like
	// (LOAD_VIDEO_PERMILLE, default 100, 0..1000).
	VideoPermille int
	// InflightMax bounds the generator's operations in flight; when it is reached the
	// generator waits, and the wait counts in the latency (LOAD_INFLIGHT_MAX, default 2048,
	// 1..100000).
	InflightMax int
	// ProbeAccounts is the number of freshness probe accounts, each with at most one probe
	// in flight (LOAD_PROBE_ACCOUNTS, default 8, 1..256).
	ProbeAccounts int
	// ProbeIntervalMs is the pause between probe starts (LOAD_PROBE_INTERVAL_MS, default
	// 100, 10..60000).
	ProbeIntervalMs int
	// ProbeTimeoutMs drops a probe not seen by the ledger and ClickHouse within it
	// (LOAD_PROBE_TIMEOUT_MS, default 60000, 1000..600000).
	ProbeTimeoutMs int
	// DrainSecondsMax bounds the sampling after the load, until both lags are 0
	// (LOAD_DRAIN_SECONDS_MAX, default 60, 0..3600).
	DrainSecondsMax int
	// RequestTimeoutMs bounds one admit or finish call (LOAD_REQUEST_TIMEOUT_MS, default 5000,
	// 100..60000).
	RequestTimeoutMs int
	// OutDir is where the results go (LOAD_OUT_DIR, default .out/bench at the repo root).
	OutDir string
}

// loadSettings lists every setting: variable, default, allowed range.
var loadSettings = []struct {
	env      string
	def      int
	min, max int
	dst      func(*loadConfig) *int
}{
	{"LOAD_RATE", 2000, 1, 100_000, func(c *loadConfig) *int { return &c.RatePerSec }},
	{"LOAD_SECONDS", 60, 1, 3600, func(c *loadConfig) *int { return &c.Seconds }},
	{"LOAD_ACCOUNTS", 200, 1, 100_000, func(c *loadConfig) *int { return &c.Accounts }},
	{"LOAD_VIDEO_PERMILLE", 100, 0, 1000, func(c *loadConfig) *int { return &c.VideoPermille }},
	{"LOAD_INFLIGHT_MAX", 2048, 1, 100_000, func(c *loadConfig) *int { return &c.InflightMax }},
	{"LOAD_PROBE_ACCOUNTS", 8, 1, 256, func(c *loadConfig) *int { return &c.ProbeAccounts }},
	{"LOAD_PROBE_INTERVAL_MS", 100, 10, 60_000, func(c *loadConfig) *int { return &c.ProbeIntervalMs }},
	{"LOAD_PROBE_TIMEOUT_MS", 60_000, 1000, 600_000, func(c *loadConfig) *int { return &c.ProbeTimeoutMs }},
	{"LOAD_DRAIN_SECONDS_MAX", 60, 0, 3600, func(c *loadConfig) *int { return &c.DrainSecondsMax }},
	{"LOAD_REQUEST_TIMEOUT_MS", 5000, 100, 60_000, func(c *loadConfig) *int { return &c.RequestTimeoutMs }},
}

// loadConfigFromEnv reads the settings; every unparsable or out-of-range value is an error
// naming its variable.
func loadConfigFromEnv() (loadConfig, error) {
	var c loadConfig
	var errs []error
	for _, s := range loadSettings {
		v := s.def
		if raw := os.Getenv(s.env); raw != "" {
			n, err := strconv.Atoi(raw)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not an integer", s.env, raw))
				continue
			}
			v = n
		}
		*s.dst(&c) = v
	}
	c.OutDir = os.Getenv("LOAD_OUT_DIR")
	if c.OutDir == "" {
		c.OutDir = filepath.Join("..", "..", "..", ".out", "bench")
	}
	return c, errors.Join(append(errs, c.Validate())...)
}

// Validate reports every out-of-range setting, joined.
func (c loadConfig) Validate() error {
	var errs []error
	for _, s := range loadSettings {
		if v := *s.dst(&c); v < s.min || v > s.max {
			errs = append(errs, fmt.Errorf("%s: %d out of range [%d, %d]", s.env, v, s.min, s.max))
		}
	}
	if c.OutDir == "" {
		errs = append(errs, errors.New("LOAD_OUT_DIR: empty"))
	}
	return errors.Join(errs...)
}

// loadCreditsMicros is each account's grant: far more than a run can spend.
const loadCreditsMicros int64 = 10_000_000 * 1_000_000

// TestLoad is the load benchmark. It reports measurements; it fails only when the pipeline
// cannot be set up or the run produced no answers at all.
func TestLoad(t *testing.T) {
	if os.Getenv("TALLY_LOAD") != "1" {
		t.Skip("the load benchmark runs with TALLY_LOAD=1 (make bench)")
	}
	cfg, err := loadConfigFromEnv()
	if err != nil {
		t.Fatalf("load settings: %v", err)
	}
	h := NewHarness(t)
	if !h.Kafka.Real {
		t.Log("KAFKA_BROKERS is not set: running against the in-process kfake broker, not real Kafka")
	}
	led := h.Ledger()
	sink := h.Sink()
	adm := h.Admitter("1", 1)
	procs := []*Proc{adm, led, sink}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	httpc := &http.Client{Timeout: time.Duration(cfg.RequestTimeoutMs) * time.Millisecond,
		Transport: &http.Transport{MaxIdleConns: cfg.InflightMax, MaxIdleConnsPerHost: cfg.InflightMax, IdleConnTimeout: 90 * time.Second}}
	cl, err := client.New(client.Config{BaseURL: "http://" + adm.Addr, APIKey: h.APIKey, HTTPClient: httpc, AttemptsMax: 1})
	if err != nil {
		t.Fatal(err)
	}

	runID := strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	accounts := make([]string, cfg.Accounts)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("load-%s-%04d", runID, i)
	}
	probeAccts := make([]string, cfg.ProbeAccounts)
	for i := range probeAccts {
		probeAccts[i] = fmt.Sprintf("probe-%s-%02d", runID, i)
	}
	setupStart := time.Now()
	if err := loadSetup(ctx, h, led, cl, append(slices.Clone(accounts), probeAccts...)); err != nil {
		t.Fatalf("setup: %v", err)
	}
	t.Logf("setup: %d accounts and %d probe accounts granted and admitted once in %s", len(accounts), len(probeAccts),
		time.Since(setupStart).Round(time.Millisecond))

	// Freshness probes: balances readers from the end, then the probe loop and the
	// ClickHouse poller.
	pt := newProbeTracker(probeAccts)
	var bg sync.WaitGroup
	bgCtx, bgCancel := context.WithCancel(ctx)
	readers, err := balanceReaders(bgCtx, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range readers {
		bg.Add(1)
		go func() {
			defer bg.Done()
			readBalances(bgCtx, r, pt)
		}()
	}
	bg.Add(2)
	go func() { defer bg.Done(); pt.pollClickHouse(bgCtx, h, 100*time.Millisecond) }()
	probeCtx, probeStop := context.WithCancel(bgCtx)
	go func() {
		defer bg.Done()
		pt.run(probeCtx, bgCtx, cl, time.Duration(cfg.ProbeIntervalMs)*time.Millisecond, time.Duration(cfg.ProbeTimeoutMs)*time.Millisecond,
			time.Duration(cfg.RequestTimeoutMs)*time.Millisecond)
	}()

	// Sampler: lag and RSS every second from the load start until drained.
	start := time.Now().Add(200 * time.Millisecond).Truncate(time.Millisecond)
	kc := &kafka.Client{Addr: kafka.TCP(h.Kafka.Brokers...), Timeout: 5 * time.Second}
	smp := &sampler{h: h, kc: kc, procs: procs, start: start}
	loadDone := make(chan struct{})
	sampDone := make(chan struct{})
	go func() {
		defer close(sampDone)
		smp.run(ctx, loadDone, pt, cfg.DrainSecondsMax)
	}()

	gen := &generator{cfg: cfg, cl: cl, accounts: accounts, runID: runID, start: start}
	gen.run(ctx)
	close(loadDone)
	probeStop() // no new probes; the ones in flight finish during the drain
	<-sampDone
	bgCancel()
	for _, r := range readers {
		_ = r.Close()
	}
	bg.Wait()

	res := gen.results(cfg, h, smp, pt)
	md, png, err := writeLoadReport(cfg, res)
	if err != nil {
		t.Fatalf("write report: %v", err)
	}
	t.Logf("load report %s, plot %s\n%s", md, png, res.table)
	if res.answered == 0 {
		t.Fatalf("no admit was answered")
	}
}

// loadSetup makes every account "pro" with loadCreditsMicros of credits, waits until the
// ledger has folded the last grant, then admits and finishes one request per account so
// that the admitter knows every balance before the load.
func loadSetup(ctx context.Context, h *Harness, led *Proc, cl *client.Client, accts []string) error {
	for _, a := range accts {
		if code, err := h.Admin(ctx, led.Addr, http.MethodPut, "/v1/accounts/"+a,
			map[string]any{"tier": "pro", "priority": events.PriorityStandard}, nil); err != nil || code != http.StatusAccepted {
			return fmt.Errorf("tier %s: %d %v", a, code, err)
		}
		body := map[string]any{"grant_id": "g-load-" + a, "amount_micros": loadCreditsMicros, "source": "purchase", "priority": 100}
		if code, err := h.Admin(ctx, led.Addr, http.MethodPost, "/v1/accounts/"+a+"/grants", body, nil); err != nil || code != http.StatusAccepted {
			return fmt.Errorf("grant %s: %d %v", a, code, err)
		}
	}
	if err := h.Tick(ctx); err != nil {
		return err
	}
	for i, a := range accts {
		err := eventually(ctx, 90*time.Second, func() error {
			rid := fmt.Sprintf("warm-%s-%d", a, time.Now().UnixNano())
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			resp, err := cl.Admit(actx, api.AdmitRequest{RequestID: rid, AccountID: a, Endpoint: "codex.responses",
				Estimate: events.Units{TokensIn: 100, TokensOut: 100}})
			if err != nil {
				return fmt.Errorf("warm-up admit %s (%d of %d): %w", a, i+1, len(accts), err)
			}
			if resp.Funding != "credits" {
				return fmt.Errorf("warm-up admit %s: funded by %q, want credits", a, resp.Funding)
			}
			_, err = cl.Finish(actx, api.FinishRequest{RequestID: rid, Status: events.StatusSucceeded,
				Usage: events.Units{TokensIn: 100, TokensOut: 100}, DurationMs: 10})
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// generator is the open-loop load: operation i is due at start + i/rate whatever happened
// to the earlier ones, and its admit latency is measured from that due time, so that a
// stall of the services (or of the generator) counts for every operation it delayed
// (no coordinated omission).
type generator struct {
	cfg      loadConfig
	cl       *client.Client
	accounts []string
	runID    string
	start    time.Time

	mu         sync.Mutex
	perSec     [][]time.Duration // admit latencies by due second
	finishLat  []time.Duration   // finish latency, from the admit answer
	outcomes   map[string]int64  // allowed, denied <reason>
	errs       map[string]int64  // admit 503 unavailable, finish transport, ...
	errSample  map[string]string // the first message of each kind
	lastAnswer time.Time
	sent       atomic.Int64
	answered   atomic.Int64
	genLate    time.Duration // how late the generator launched its last operation
}

func (g *generator) run(ctx context.Context) {
	total := g.cfg.RatePerSec * g.cfg.Seconds
	g.perSec = make([][]time.Duration, g.cfg.Seconds)
	g.outcomes = map[string]int64{}
	g.errs = map[string]int64{}
	g.errSample = map[string]string{}
	sem := make(chan struct{}, g.cfg.InflightMax)
	var wg sync.WaitGroup
	for i := 0; i < total && ctx.Err() == nil; i++ {
		due := g.start.Add(time.Duration(i) * time.Second / time.Duration(g.cfg.RatePerSec))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		sem <- struct{}{}
		g.genLate = time.Since(due)
		g.sent.Add(1)
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			g.op(ctx, i, due)
		}()
	}
	wg.Wait()
}

// op admits one request and finishes it at once with usage near the estimate.
func (g *generator) op(ctx context.Context, i int, due time.Time) {
	rng := rand.New(rand.NewPCG(seed(), uint64(i)+1))
	rid := fmt.Sprintf("ld-%s-%d", g.runID, i)
	acct := g.accounts[rng.IntN(len(g.accounts))]
	video := rng.IntN(1000) < g.cfg.VideoPermille
	req := api.AdmitRequest{RequestID: rid, AccountID: acct, Endpoint: "codex.responses",
		Estimate: events.Units{TokensIn: 100 + rng.Int64N(4000), TokensOut: 100 + rng.Int64N(2000)}}
	if video {
		req.Endpoint = "sora.video"
		req.Estimate = events.Units{VideoSeconds: 2 + rng.Int64N(18), Resolution: resolutions[rng.IntN(3)]}
	}
	timeout := time.Duration(g.cfg.RequestTimeoutMs) * time.Millisecond
	actx, cancel := context.WithTimeout(ctx, timeout)
	_, err := g.cl.Admit(actx, req)
	cancel()
	answered := time.Now()
	lat := answered.Sub(due)
	sec := min(int(due.Sub(g.start)/time.Second), len(g.perSec)-1)
	var denied *client.DeniedError
	outcome := "allowed"
	switch {
	case errors.As(err, &denied):
		outcome = "denied " + string(denied.Reason)
	case err != nil:
		g.fail("admit", err)
		return
	}
	g.answered.Add(1)
	g.mu.Lock()
	g.perSec[sec] = append(g.perSec[sec], lat)
	g.outcomes[outcome]++
	if answered.After(g.lastAnswer) {
		g.lastAnswer = answered
	}
	g.mu.Unlock()
	if denied != nil {
		return
	}
	fin := api.FinishRequest{RequestID: rid, Status: events.StatusSucceeded, DurationMs: 50 + rng.Int64N(50)}
	scale := func(v int64) int64 { return max(1, v*int64(60+rng.IntN(71))/100) }
	fin.Usage = events.Units{TokensIn: scale(req.Estimate.TokensIn), TokensOut: scale(req.Estimate.TokensOut)}
	if video {
		fin.Usage = events.Units{VideoSeconds: scale(req.Estimate.VideoSeconds), Resolution: req.Estimate.Resolution}
		fin.DurationMs = 500 + rng.Int64N(500)
	}
	fctx, fcancel := context.WithTimeout(ctx, timeout)
	_, err = g.cl.Finish(fctx, fin)
	fcancel()
	if err != nil {
		g.fail("finish", err)
		return
	}
	d := time.Since(answered)
	g.mu.Lock()
	g.finishLat = append(g.finishLat, d)
	g.mu.Unlock()
}

// fail counts an error by kind: "admit 503 unavailable", "finish transport", "admit timeout".
func (g *generator) fail(what string, err error) {
	key := what + " transport"
	var ae *client.APIError
	switch {
	case errors.As(err, &ae):
		key = fmt.Sprintf("%s %d %s", what, ae.Status, ae.Code)
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Client.Timeout"):
		key = what + " timeout"
	}
	g.mu.Lock()
	g.errs[key]++
	if _, ok := g.errSample[key]; !ok {
		g.errSample[key] = err.Error()
	}
	g.mu.Unlock()
}

// probeTracker measures the freshness on dedicated probe accounts, each with at most one
// probe in flight. A probe is admitted; the ledger freshness is the time from the admit
// answer to the first balance.updated of the account with a hold (its hold was 0 before:
// the previous probe's release was seen); the ClickHouse freshness is the time from the
// admit answer to its request.started row being queryable in usage_events. The probe is
// finished once the ledger showed the hold, and its account is free again once the ledger
// showed the release and ClickHouse the row.
type probeTracker struct {
	mu       sync.Mutex
	accounts []string
	state    map[string]*probe
	ledger   []time.Duration
	ch       []time.Duration
	started  int
	failed   map[string]int // probe admits not allowed, timeouts
	finishes chan *probe
	// balances counts the probe accounts' balance.updated read; badBalances those that did
	// not decode.
	balances, badBalances int
	readErrs              int
	allBalances           int    // every balance.updated read
	readErr               string // the first balances read error
}

type probe struct {
	acct, rid  string
	answered   time.Time // zero while admitting
	earlyHeld  time.Time // a hold seen before the admit answer arrived
	ledgerSeen bool
	finishSent bool
	released   bool
	chSeen     bool
}

func newProbeTracker(accts []string) *probeTracker {
	pt := &probeTracker{accounts: accts, state: map[string]*probe{}, failed: map[string]int{},
		finishes: make(chan *probe, len(accts))}
	return pt
}

// inFlight is the number of probes not yet complete.
func (pt *probeTracker) inFlight() int {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return len(pt.state)
}

// run starts a probe every interval on the next free account, finishes probes the ledger
// has seen, and drops probes older than timeout, until ctx ends; then it keeps finishing
// and expiring the probes in flight until none is left or all ends.
func (pt *probeTracker) run(ctx, all context.Context, cl *client.Client, interval, timeout, callTimeout time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	next := 0
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case p := <-pt.finishes:
			wg.Add(1)
			go func() {
				defer wg.Done()
				fctx, cancel := context.WithTimeout(all, callTimeout)
				defer cancel()
				_, _ = cl.Finish(fctx, api.FinishRequest{RequestID: p.rid, Status: events.StatusSucceeded,
					Usage: events.Units{TokensIn: 500, TokensOut: 200}, DurationMs: 20})
			}()
			continue
		case <-tick.C:
		}
		pt.expire(timeout)
		if all.Err() != nil {
			return
		}
		if ctx.Err() != nil {
			if pt.inFlight() == 0 {
				return
			}
			continue
		}
		acct := ""
		pt.mu.Lock()
		for k := 0; k < len(pt.accounts); k++ {
			a := pt.accounts[(next+k)%len(pt.accounts)]
			if pt.state[a] == nil {
				acct, next = a, (next+k+1)%len(pt.accounts)
				break
			}
		}
		var p *probe
		if acct != "" {
			pt.started++
			p = &probe{acct: acct, rid: fmt.Sprintf("probe-%s-%d", acct, pt.started)}
			pt.state[acct] = p
		}
		pt.mu.Unlock()
		if p == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			actx, cancel := context.WithTimeout(all, callTimeout)
			resp, err := cl.Admit(actx, api.AdmitRequest{RequestID: p.rid, AccountID: p.acct, Endpoint: "codex.responses",
				Estimate: events.Units{TokensIn: 1000, TokensOut: 500}})
			cancel()
			now := time.Now()
			pt.mu.Lock()
			defer pt.mu.Unlock()
			if err != nil || resp.HoldMicros == 0 {
				kind := "probe admit: no hold"
				var denied *client.DeniedError
				var ae *client.APIError
				switch {
				case errors.As(err, &denied):
					kind = "probe admit: denied " + string(denied.Reason)
				case errors.As(err, &ae):
					kind = fmt.Sprintf("probe admit: %d %s", ae.Status, ae.Code)
				case err != nil:
					kind = "probe admit: transport"
				}
				pt.failed[kind]++
				delete(pt.state, p.acct)
				return
			}
			p.answered = now
			if !p.earlyHeld.IsZero() {
				pt.ledger = append(pt.ledger, 0)
				p.ledgerSeen = true
				p.finishSent = true
				pt.finishes <- p
			}
		}()
	}
}

func (pt *probeTracker) expire(timeout time.Duration) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for a, p := range pt.state {
		if !p.answered.IsZero() && time.Since(p.answered) > timeout {
			switch {
			case !p.ledgerSeen:
				pt.failed["probe timeout: ledger"]++
			case !p.released:
				pt.failed["probe timeout: ledger release"]++
			default:
				pt.failed["probe timeout: clickhouse"]++
			}
			delete(pt.state, a)
		}
	}
}

// onBalance handles one balance.updated of a probe account received at at.
func (pt *probeTracker) onBalance(acct string, heldMicros int64, at time.Time) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.balances++
	p := pt.state[acct]
	if p == nil {
		return
	}
	switch {
	case !p.ledgerSeen && heldMicros > 0:
		if p.answered.IsZero() {
			p.earlyHeld = at
			return
		}
		pt.ledger = append(pt.ledger, at.Sub(p.answered))
		p.ledgerSeen = true
		p.finishSent = true
		pt.finishes <- p // capacity: one per account
	case p.finishSent && heldMicros == 0:
		p.released = true
		if p.chSeen {
			delete(pt.state, acct)
		}
	}
}

// pollClickHouse looks for the request.started rows of the probes every interval.
func (pt *probeTracker) pollClickHouse(ctx context.Context, h *Harness, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pt.mu.Lock()
		var accts, rids []string
		for _, p := range pt.state {
			if !p.answered.IsZero() && !p.chSeen {
				accts = append(accts, "'"+p.acct+"'")
				rids = append(rids, "'"+p.rid+"'")
			}
		}
		pt.mu.Unlock()
		if len(rids) == 0 {
			continue
		}
		// Ids are generated by this test ([a-z0-9-]), safe to inline.
		q := fmt.Sprintf("SELECT account_id, request_id FROM usage_events WHERE account_id IN (%s) AND request_id IN (%s) AND type = '%s'",
			strings.Join(accts, ","), strings.Join(rids, ","), events.TypeRequestStarted)
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		rows, err := h.Conn.Query(qctx, q)
		if err != nil {
			cancel()
			continue
		}
		found := map[string]string{}
		for rows.Next() {
			var a, r string
			if rows.Scan(&a, &r) == nil {
				found[a] = r
			}
		}
		_ = rows.Close()
		cancel()
		now := time.Now()
		pt.mu.Lock()
		for a, r := range found {
			if p := pt.state[a]; p != nil && p.rid == r && !p.chSeen {
				p.chSeen = true
				pt.ch = append(pt.ch, now.Sub(p.answered))
				if p.released {
					delete(pt.state, a)
				}
			}
		}
		pt.mu.Unlock()
	}
}

// balanceReaders opens one reader per partition of the balances topic, at its end.
func balanceReaders(ctx context.Context, h *Harness) ([]*kafka.Reader, error) {
	var rs []*kafka.Reader
	for p := 0; p < partitions; p++ {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: h.Kafka.Brokers, Topic: h.Kafka.Topics.Balances, Partition: p,
			MinBytes: 1, MaxBytes: 8 << 20, MaxWait: 100 * time.Millisecond})
		if err := r.SetOffset(kafka.LastOffset); err != nil {
			return nil, fmt.Errorf("balances reader %d: %w", p, err)
		}
		rs = append(rs, r)
	}
	return rs, ctx.Err()
}

func readBalances(ctx context.Context, r *kafka.Reader, pt *probeTracker) {
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			pt.mu.Lock()
			pt.readErrs++
			if pt.readErr == "" {
				pt.readErr = err.Error()
			}
			pt.mu.Unlock()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		at := time.Now()
		pt.mu.Lock()
		pt.allBalances++
		pt.mu.Unlock()
		if !strings.HasPrefix(string(m.Key), "probe-") {
			continue
		}
		ev, err := events.Decode(m.Value)
		if err != nil {
			pt.mu.Lock()
			pt.badBalances++
			pt.mu.Unlock()
			continue
		}
		if b, ok := ev.Payload.(events.BalanceUpdated); ok { // Decode stores payloads by value
			pt.onBalance(b.AccountID, b.HeldMicros, at)
		}
	}
}

// secSample is one second of the run.
type secSample struct {
	At                 float64 // seconds since the load start
	LedgerLag, SinkLag int64   // messages behind; -1 when the broker did not answer
	RSS                map[string]int64
}

// sampler records the lags and RSS every second.
type sampler struct {
	h       *Harness
	kc      *kafka.Client
	procs   []*Proc
	start   time.Time
	samples []secSample
	errs    int
	errMsg  string  // the first lag error
	drained float64 // seconds after the load's end until both lags were 0 (-1: not drained)
}

func (s *sampler) run(ctx context.Context, loadDone <-chan struct{}, pt *probeTracker, drainMax int) {
	s.drained = -1
	var doneAt time.Time
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(s.start.Add(time.Duration(k) * time.Second))):
		}
		sm := secSample{At: time.Since(s.start).Seconds(), RSS: map[string]int64{}}
		var err error
		if sm.LedgerLag, err = s.lag(ctx, s.h.Kafka.Group("ledger"), s.h.Kafka.Topics.Events); err != nil {
			sm.LedgerLag = -1
			s.fail(err)
		}
		if sm.SinkLag, err = s.lag(ctx, s.h.Kafka.Group("sink"), s.h.Kafka.Topics.Events, s.h.Kafka.Topics.Journal); err != nil {
			sm.SinkLag = -1
			s.fail(err)
		}
		for _, p := range s.procs {
			sm.RSS[p.Name] = p.rssBytes()
		}
		sm.RSS["test process"] = rssOf("self")
		s.samples = append(s.samples, sm)
		select {
		case <-loadDone:
			if doneAt.IsZero() {
				doneAt = time.Now()
			}
		default:
			continue
		}
		if sm.LedgerLag == 0 && sm.SinkLag == 0 && s.drained < 0 {
			s.drained = time.Since(doneAt).Seconds()
		}
		if (s.drained >= 0 && pt.inFlight() == 0) || time.Since(doneAt) > time.Duration(drainMax)*time.Second {
			return
		}
	}
}

func (s *sampler) fail(err error) {
	s.errs++
	if s.errMsg == "" {
		s.errMsg = err.Error()
	}
}

// lag is the sum over the topics' partitions of end offset minus the group's committed
// offset (a partition without a commit counts from 0: the topics are fresh).
func (s *sampler) lag(ctx context.Context, group string, topics ...string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	parts := make([]int, partitions)
	for i := range parts {
		parts[i] = i
	}
	lo := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	of := &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{}}
	for _, tp := range topics {
		for _, p := range parts {
			lo.Topics[tp] = append(lo.Topics[tp], kafka.LastOffsetOf(p))
		}
		of.Topics[tp] = parts
	}
	ends, err := s.kc.ListOffsets(ctx, lo)
	if err != nil {
		return 0, err
	}
	comm, err := s.kc.OffsetFetch(ctx, of)
	if err != nil {
		return 0, err
	}
	if comm.Error != nil {
		return 0, comm.Error
	}
	committed := map[string]int64{}
	for tp, ps := range comm.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return 0, p.Error
			}
			committed[tp+"/"+strconv.Itoa(p.Partition)] = max(0, p.CommittedOffset)
		}
	}
	var lag int64
	for tp, ps := range ends.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return 0, p.Error
			}
			lag += max(0, p.LastOffset-committed[tp+"/"+strconv.Itoa(p.Partition)])
		}
	}
	return lag, nil
}

// rssBytes is the process's resident set size (0 when it is not running).
func (p *Proc) rssBytes() int64 {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil || !p.Running() {
		return 0
	}
	return rssOf(strconv.Itoa(cmd.Process.Pid))
}

// rssOf reads VmRSS from /proc/<pid>/status.
func rssOf(pid string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// loadResults is what the report shows.
type loadResults struct {
	when                 time.Time
	brokers              string
	cfg                  loadConfig
	sent, answered       int64
	achievedPerSec       float64
	genLate              time.Duration
	all                  []time.Duration
	p50s, p99s           []float64 // per due second, ms (NaN when empty)
	countPerSec          []int
	finish               []time.Duration
	outcomes, errs       map[string]int64
	ledgerFresh, chFresh []time.Duration
	probesStarted        int
	probeFailed          map[string]int
	probeBalances        int
	probeBadBalances     int
	probeReadErrs        int
	allBalances          int
	probeReadErr         string
	samples              []secSample
	sampleErrs           int
	sampleErrMsg         string
	errSample            map[string]string
	drained              float64
	procNames            []string
	table                string
}

func (g *generator) results(cfg loadConfig, h *Harness, s *sampler, pt *probeTracker) *loadResults {
	g.mu.Lock()
	defer g.mu.Unlock()
	pt.mu.Lock()
	defer pt.mu.Unlock()
	r := &loadResults{when: time.Now().UTC(), cfg: cfg, sent: g.sent.Load(), answered: g.answered.Load(), genLate: g.genLate,
		finish: g.finishLat, outcomes: g.outcomes, errs: g.errs, ledgerFresh: pt.ledger, chFresh: pt.ch,
		probesStarted: pt.started, probeFailed: pt.failed, probeBalances: pt.balances, probeBadBalances: pt.badBalances,
		probeReadErrs: pt.readErrs, allBalances: pt.allBalances, probeReadErr: pt.readErr, samples: s.samples, sampleErrs: s.errs, sampleErrMsg: s.errMsg, errSample: g.errSample, drained: s.drained}
	r.brokers = strings.Join(h.Kafka.Brokers, ",")
	if h.Kafka.Real {
		r.brokers = "real Kafka at " + r.brokers
	} else {
		r.brokers = "in-process kfake (KAFKA_BROKERS unset)"
	}
	if win := g.lastAnswer.Sub(g.start).Seconds(); win > 0 {
		r.achievedPerSec = float64(r.answered) / math.Max(win, float64(cfg.Seconds))
	}
	for _, b := range g.perSec {
		r.all = append(r.all, b...)
		r.countPerSec = append(r.countPerSec, len(b))
		r.p50s = append(r.p50s, ms(quantile(b, 0.50)))
		r.p99s = append(r.p99s, ms(quantile(b, 0.99)))
	}
	for _, p := range s.procs {
		r.procNames = append(r.procNames, p.Name)
	}
	r.procNames = append(r.procNames, "test process")
	r.table = r.markdown()
	return r
}

// quantile is the nearest-rank q-quantile (-1 when d is empty); it sorts d.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return -1
	}
	slices.Sort(d)
	i := int(math.Ceil(q*float64(len(d)))) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func ms(d time.Duration) float64 {
	if d < 0 {
		return math.NaN()
	}
	return float64(d) / float64(time.Millisecond)
}

func fmtMs(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	return strconv.FormatFloat(ms(d), 'f', 1, 64)
}

func mib(b int64) string { return strconv.FormatFloat(float64(b)/(1<<20), 'f', 0, 64) + " MiB" }

func countsLine(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// markdown is the results table, then the per-second series.
func (r *loadResults) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Load run %s\n\n", r.when.Format(time.RFC3339))
	fmt.Fprintf(&b, "Ledger, sink and one admitter as subprocesses against %s; embedded ClickHouse (chDB) in the test process. "+
		"%d pre-granted pro accounts; %d permille video-like requests, the rest code-like; each admit allowed is finished at once.\n\n",
		r.brokers, r.cfg.Accounts, r.cfg.VideoPermille)
	row := func(k, v string) { fmt.Fprintf(&b, "| %s | %s |\n", k, v) }
	b.WriteString("| metric | value |\n|---|---|\n")
	row("rate offered", fmt.Sprintf("%d admits/s for %d s (%d scheduled, %d sent)", r.cfg.RatePerSec, r.cfg.Seconds,
		r.cfg.RatePerSec*r.cfg.Seconds, r.sent))
	row("rate achieved", fmt.Sprintf("%.0f admits/s answered (%d answered)", r.achievedPerSec, r.answered))
	all := slices.Clone(r.all)
	row("admit latency p50 / p99 / p99.9 (from the scheduled send time)", fmt.Sprintf("%s / %s / %s ms (max %s ms)",
		fmtMs(quantile(all, 0.5)), fmtMs(quantile(all, 0.99)), fmtMs(quantile(all, 0.999)), fmtMs(quantile(all, 1))))
	fin := slices.Clone(r.finish)
	row("finish latency p50 / p99 (from the admit answer)", fmt.Sprintf("%s / %s ms", fmtMs(quantile(fin, 0.5)), fmtMs(quantile(fin, 0.99))))
	row("admit outcomes", countsLine(r.outcomes))
	row("errors by kind", countsLine(r.errs))
	lf, cf := slices.Clone(r.ledgerFresh), slices.Clone(r.chFresh)
	row("freshness ledger (admit answer → balance.updated on the balances topic) p50 / p99",
		fmt.Sprintf("%s / %s ms (%d probes)", fmtMs(quantile(lf, 0.5)), fmtMs(quantile(lf, 0.99)), len(lf)))
	row("freshness ClickHouse (admit answer → row queryable in usage_events, polled every 100 ms) p50 / p99",
		fmt.Sprintf("%s / %s ms (%d probes)", fmtMs(quantile(cf, 0.5)), fmtMs(quantile(cf, 0.99)), len(cf)))
	pf := map[string]int64{}
	for k, v := range r.probeFailed {
		pf[k] = int64(v)
	}
	row("probes", fmt.Sprintf("%d started; failures: %s; probe balance.updated read: %d of %d (%d undecodable)", r.probesStarted,
		countsLine(pf), r.probeBalances, r.allBalances, r.probeBadBalances))
	if r.probeReadErrs > 0 {
		row("balances read errors", fmt.Sprintf("%d (first: %s)", r.probeReadErrs, r.probeReadErr))
	}
	var maxL, maxS int64
	var atL, atS float64
	peak := map[string]int64{}
	for _, s := range r.samples {
		if s.LedgerLag > maxL {
			maxL, atL = s.LedgerLag, s.At
		}
		if s.SinkLag > maxS {
			maxS, atS = s.SinkLag, s.At
		}
		for k, v := range s.RSS {
			peak[k] = max(peak[k], v)
		}
	}
	row("max ledger lag (group lag on events)", fmt.Sprintf("%d messages (t=%.0f s)", maxL, atL))
	row("max sink lag (group lag on events + journal)", fmt.Sprintf("%d messages (t=%.0f s)", maxS, atS))
	drain := "not drained within LOAD_DRAIN_SECONDS_MAX"
	if r.drained >= 0 {
		drain = fmt.Sprintf("%.0f s", r.drained)
	}
	row("both lags back to 0 after the generator's last answer", drain)
	for _, n := range r.procNames {
		label := "peak RSS " + n
		if n == "test process" {
			label += " (generator + embedded ClickHouse)"
		}
		row(label, mib(peak[n]))
	}
	row("generator lateness at its last send", r.genLate.Round(time.Microsecond).String())
	if r.sampleErrs > 0 {
		row("lag samples failed", fmt.Sprintf("%d (first: %s)", r.sampleErrs, r.sampleErrMsg))
	}
	if len(r.errSample) > 0 {
		keys := slices.Sorted(maps.Keys(r.errSample))
		for _, k := range keys {
			row("first error "+k, strings.ReplaceAll(r.errSample[k], "|", "/"))
		}
	}
	b.WriteString("\n## Per second\n\n| t (s) | admits answered (by due second) | admit p50 (ms) | admit p99 (ms) | ledger lag | sink lag |")
	for _, n := range r.procNames {
		fmt.Fprintf(&b, " RSS %s (MiB) |", n)
	}
	b.WriteString("\n|---|---|---|---|---|---|" + strings.Repeat("---|", len(r.procNames)) + "\n")
	for i, s := range r.samples {
		cnt, p50, p99 := "", "", ""
		if i < len(r.p50s) {
			cnt = strconv.Itoa(r.countPerSec[i])
			p50 = strconv.FormatFloat(r.p50s[i], 'f', 1, 64)
			p99 = strconv.FormatFloat(r.p99s[i], 'f', 1, 64)
		}
		fmt.Fprintf(&b, "| %.0f | %s | %s | %s | %d | %d |", s.At, cnt, p50, p99, s.LedgerLag, s.SinkLag)
		for _, n := range r.procNames {
			fmt.Fprintf(&b, " %.0f |", float64(s.RSS[n])/(1<<20))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// writeLoadReport writes load-<timestamp>.md and .png into cfg.OutDir.
func writeLoadReport(cfg loadConfig, r *loadResults) (mdPath, pngPath string, err error) {
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return "", "", err
	}
	base := filepath.Join(cfg.OutDir, "load-"+r.when.Format("20060102-150405"))
	mdPath, pngPath = base+".md", base+".png"
	md := r.table + fmt.Sprintf("\nPlot: %s\n", filepath.Base(pngPath))
	if err := os.WriteFile(mdPath, []byte(md), 0o644); err != nil {
		return "", "", err
	}
	// Latency is by due second (index i = second i of the load); lags by sample time.
	lat := make([]point, 0, len(r.p99s))
	for i, v := range r.p99s {
		lat = append(lat, point{float64(i) + 0.5, v})
	}
	p50 := make([]point, 0, len(r.p50s))
	for i, v := range r.p50s {
		p50 = append(p50, point{float64(i) + 0.5, v})
	}
	var ll, sl []point
	for _, s := range r.samples {
		if s.LedgerLag >= 0 {
			ll = append(ll, point{s.At, float64(s.LedgerLag)})
		}
		if s.SinkLag >= 0 {
			sl = append(sl, point{s.At, float64(s.SinkLag)})
		}
	}
	xMax := float64(r.cfg.Seconds)
	if n := len(r.samples); n > 0 {
		xMax = math.Max(xMax, r.samples[n-1].At)
	}
	title := fmt.Sprintf("TALLY LOAD %s  %d ADMITS/S FOR %d S", r.when.Format("2006-01-02 15:04Z"), r.cfg.RatePerSec, r.cfg.Seconds)
	err = writePlot(pngPath, title, xMax, float64(r.cfg.Seconds), []panel{
		{title: "ADMIT LATENCY PER SECOND (MS, LOG SCALE, FROM THE SCHEDULED SEND TIME)", logY: true, series: []series{
			{name: "P99", col: colRed, pts: lat}, {name: "P50", col: colBlue, pts: p50}}},
		{title: "CONSUMER GROUP LAG (MESSAGES)", series: []series{
			{name: "LEDGER (EVENTS)", col: colGreen, pts: ll}, {name: "SINK (EVENTS+JOURNAL)", col: colOrange, pts: sl}}},
	})
	return mdPath, pngPath, err
}
