//go:build chaos

package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/shared/events"
)

// seed is the workload seed (CHAOS_SEED, default 20261125).
func seed() uint64 {
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		if v, err := strconv.ParseUint(s, 10, 64); err == nil {
			return v
		}
	}
	return 20261125
}

// Account is one workload account with its starting tier.
type Account struct {
	ID   string
	Tier string
}

// Mix is the workload's composition, in permille of operations; the rest are code-like
// requests (short, many).
type Mix struct {
	VideoPermille   int // video-like requests: long, expensive
	AbandonPermille int // admitted, never finished (their holds must expire)
	GrantPermille   int // grants, a third of them expiring within seconds
	TierPermille    int // tier changes (PUT /v1/accounts/{id})
}

// DefaultMix is the mix of the fault scenarios.
var DefaultMix = Mix{VideoPermille: 80, AbandonPermille: 15, GrantPermille: 10, TierPermille: 5}

// Workload drives the admitters and the ledger's admin API with a seeded mix. Each worker
// has its own generator seeded from (seed, worker), so a worker's sequence of choices is
// reproducible; the interleaving of workers is not.
type Workload struct {
	H        *Harness
	Name     string // request-id prefix, unique per scenario
	Seed     uint64
	Accounts []Account
	Mix      Mix
	Workers  int
	// Target stops the workload once this many answers were acknowledged (0 = until ctx ends).
	Target int64
	// Admitters are the admitter addresses; worker i uses Admitters[i % len].
	Admitters []*Proc
	Ledger    *Proc
	// FinishDelayMax is the longest simulated run of a video-like request.
	FinishDelayMax time.Duration
	// RatePerSec paces the operations started by all workers together (0 = as fast as the
	// services answer), so that a run of a given size lasts long enough for its faults.
	RatePerSec int

	paceStart time.Time
	paceN     atomic.Int64

	Rec     *Record
	clients []*client.Client
	// runs makes request and grant ids unique across several Run calls of one workload (a
	// reused id would be an idempotent replay, not a new request).
	runs int
}

// AdmitRec is an admit answered 200 allowed.
type AdmitRec struct {
	Account, Endpoint, Funding string
	HoldMicros                 int64
	At                         time.Time
}

// Record is everything the workload was told. Only acknowledged answers count as events
// that must exist: 200 allowed (request.started), 429 denied (request.rejected), 200 finish
// (request.finished), 202 grant (credits.granted) and 202 tier change (account.updated).
type Record struct {
	mu        sync.Mutex
	Allowed   map[string]AdmitRec
	Denied    map[string]string // request id -> reason
	Finished  map[string]int64  // request id -> cost_micros
	Abandoned map[string]bool   // allowed, finish never sent
	Unsettled map[string]bool   // allowed, finish sent but not acknowledged
	Grants    map[string]string // event id -> account
	Updates   map[string]string // event id -> account
	Errors    map[string]int64  // "admit 503 unavailable", "finish transport", ...
	// Unavailable counts admit answers 503 unavailable, with the time of the first and last.
	Unavailable         int64
	FirstUnav, LastUnav time.Time
	LastAllowed         time.Time
	acked               atomic.Int64
	attempts            atomic.Int64
}

// NewRecord returns an empty record.
func NewRecord() *Record {
	return &Record{Allowed: map[string]AdmitRec{}, Denied: map[string]string{}, Finished: map[string]int64{},
		Abandoned: map[string]bool{}, Unsettled: map[string]bool{}, Grants: map[string]string{},
		Updates: map[string]string{}, Errors: map[string]int64{}}
}

// Acked is the number of acknowledged answers.
func (r *Record) Acked() int64 { return r.acked.Load() }

func (r *Record) errorf(what string, err error) {
	key := what + " transport"
	var ae *client.APIError
	if errors.As(err, &ae) {
		key = fmt.Sprintf("%s %d %s", what, ae.Status, ae.Code)
	}
	r.mu.Lock()
	r.Errors[key]++
	if what == "admit" && ae != nil && ae.Status == http.StatusServiceUnavailable && ae.Code == "unavailable" {
		now := time.Now()
		if r.Unavailable == 0 {
			r.FirstUnav = now
		}
		r.Unavailable++
		r.LastUnav = now
	}
	r.mu.Unlock()
}

// Run drives the workload until Target answers were acknowledged or ctx ends.
func (w *Workload) Run(ctx context.Context) error {
	if w.Rec == nil {
		w.Rec = NewRecord()
	}
	w.runs++
	w.paceStart = time.Now()
	w.paceN.Store(0)
	if w.FinishDelayMax == 0 {
		w.FinishDelayMax = 20 * time.Millisecond
	}
	httpc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	w.clients = nil
	for _, a := range w.Admitters {
		c, err := client.New(client.Config{BaseURL: "http://" + a.Addr, APIKey: w.H.APIKey, HTTPClient: httpc, AttemptsMax: 1})
		if err != nil {
			return err
		}
		w.clients = append(w.clients, c)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < w.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.worker(ctx, cancel, i)
		}()
	}
	wg.Wait()
	return nil
}

func (w *Workload) worker(ctx context.Context, stop context.CancelFunc, i int) {
	rng := rand.New(rand.NewPCG(w.Seed, uint64(i)+1))
	cl := w.clients[i%len(w.clients)]
	name := fmt.Sprintf("%s-%d", w.Name, w.runs)
	for n := 0; ctx.Err() == nil; n++ {
		if w.Target > 0 && w.Rec.Acked() >= w.Target {
			stop()
			return
		}
		if w.RatePerSec > 0 {
			due := w.paceStart.Add(time.Duration(w.paceN.Add(1)) * time.Second / time.Duration(w.RatePerSec))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		acct := w.Accounts[rng.IntN(len(w.Accounts))]
		r := rng.IntN(1000)
		switch m := w.Mix; {
		case r < m.GrantPermille:
			w.grant(ctx, rng, acct.ID, fmt.Sprintf("g-%s-%d-%d", name, i, n))
		case r < m.GrantPermille+m.TierPermille:
			tiers := []string{"pro", "plus", "pro", "free"}
			w.tier(ctx, acct.ID, tiers[rng.IntN(len(tiers))])
		case r < m.GrantPermille+m.TierPermille+m.VideoPermille:
			w.request(ctx, rng, cl, acct.ID, fmt.Sprintf("r-%s-%d-%d", name, i, n), true, false)
		case r < m.GrantPermille+m.TierPermille+m.VideoPermille+m.AbandonPermille:
			w.request(ctx, rng, cl, acct.ID, fmt.Sprintf("r-%s-%d-%d", name, i, n), rng.IntN(2) == 0, true)
		default:
			w.request(ctx, rng, cl, acct.ID, fmt.Sprintf("r-%s-%d-%d", name, i, n), false, false)
		}
	}
}

// Grant posts a grant through the ledger's admin API; expiring grants end within seconds.
func (w *Workload) grant(ctx context.Context, rng *rand.Rand, acct, grantID string) {
	body := map[string]any{"grant_id": grantID, "amount_micros": (1 + rng.Int64N(50)) * 1_000_000, "source": "purchase",
		"priority": rng.IntN(200)}
	if rng.IntN(3) == 0 {
		body["expires_at"] = time.Now().Add(time.Duration(1500+rng.IntN(2500)) * time.Millisecond).UTC()
	}
	w.Rec.attempts.Add(1)
	var acc struct {
		EventID string `json:"event_id"`
	}
	code, err := w.H.Admin(ctx, w.Ledger.Addr, http.MethodPost, "/v1/accounts/"+acct+"/grants", body, &acc)
	if err != nil || code != http.StatusAccepted {
		if ctx.Err() != nil {
			return // the workload ended mid-call
		}
		w.Rec.mu.Lock()
		w.Rec.Errors[fmt.Sprintf("grant %d", code)]++
		w.Rec.mu.Unlock()
		return
	}
	w.Rec.mu.Lock()
	w.Rec.Grants[acc.EventID] = acct
	w.Rec.mu.Unlock()
	w.Rec.acked.Add(1)
}

func (w *Workload) tier(ctx context.Context, acct, tier string) {
	w.Rec.attempts.Add(1)
	var acc struct {
		EventID string `json:"event_id"`
	}
	code, err := w.H.Admin(ctx, w.Ledger.Addr, http.MethodPut, "/v1/accounts/"+acct,
		map[string]any{"tier": tier, "priority": events.PriorityStandard}, &acc)
	if err != nil || code != http.StatusAccepted {
		if ctx.Err() != nil {
			return
		}
		w.Rec.mu.Lock()
		w.Rec.Errors[fmt.Sprintf("tier %d", code)]++
		w.Rec.mu.Unlock()
		return
	}
	w.Rec.mu.Lock()
	w.Rec.Updates[acc.EventID] = acct
	w.Rec.mu.Unlock()
	w.Rec.acked.Add(1)
}

var resolutions = []string{"480p", "720p", "1080p"}

// request admits one request and, unless abandoned, finishes it with usage near the estimate.
func (w *Workload) request(ctx context.Context, rng *rand.Rand, cl *client.Client, acct, rid string, video, abandon bool) {
	req := api.AdmitRequest{RequestID: rid, AccountID: acct, Endpoint: "codex.responses",
		Estimate: events.Units{TokensIn: 100 + rng.Int64N(4000), TokensOut: 100 + rng.Int64N(2000)}}
	if video {
		req.Endpoint = "sora.video"
		req.Estimate = events.Units{VideoSeconds: 2 + rng.Int64N(18), Resolution: resolutions[rng.IntN(3)]}
	}
	w.Rec.attempts.Add(1)
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	resp, err := cl.Admit(actx, req)
	cancel()
	var denied *client.DeniedError
	switch {
	case errors.As(err, &denied):
		w.Rec.mu.Lock()
		w.Rec.Denied[rid] = string(denied.Reason)
		w.Rec.mu.Unlock()
		w.Rec.acked.Add(1)
		return
	case err != nil:
		if ctx.Err() == nil {
			w.Rec.errorf("admit", err)
		}
		return
	}
	now := time.Now()
	w.Rec.mu.Lock()
	w.Rec.Allowed[rid] = AdmitRec{Account: acct, Endpoint: req.Endpoint, Funding: resp.Funding, HoldMicros: resp.HoldMicros, At: now}
	w.Rec.LastAllowed = now
	if abandon {
		w.Rec.Abandoned[rid] = true
	}
	w.Rec.mu.Unlock()
	w.Rec.acked.Add(1)
	if abandon {
		return
	}
	if video && w.FinishDelayMax > 0 {
		time.Sleep(time.Duration(rng.Int64N(int64(w.FinishDelayMax))))
	}
	fin := api.FinishRequest{RequestID: rid, Status: events.StatusSucceeded, DurationMs: 50 + rng.Int64N(50)}
	switch r := rng.IntN(100); {
	case r < 3:
		fin.Status = events.StatusFailed
		fin.Usage = events.Units{TokensIn: req.Estimate.TokensIn / 2}
		if video {
			fin.Usage = events.Units{VideoSeconds: req.Estimate.VideoSeconds / 2, Resolution: req.Estimate.Resolution}
		}
	case r < 5:
		fin.Status = events.StatusCancelled // empty usage costs 0
	default:
		// Usage within [-40%, +30%] of the estimate: some finishes cost more than the hold.
		scale := func(v int64) int64 { return max(1, v*int64(60+rng.IntN(71))/100) }
		fin.Usage = events.Units{TokensIn: scale(req.Estimate.TokensIn), TokensOut: scale(req.Estimate.TokensOut)}
		if video {
			fin.Usage = events.Units{VideoSeconds: scale(req.Estimate.VideoSeconds), Resolution: req.Estimate.Resolution}
			fin.DurationMs = 500 + rng.Int64N(500)
		}
	}
	fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
	fr, err := cl.Finish(fctx, fin)
	fcancel()
	w.Rec.attempts.Add(1)
	if err != nil {
		if ctx.Err() == nil {
			w.Rec.errorf("finish", err)
		}
		w.Rec.mu.Lock()
		w.Rec.Unsettled[rid] = true
		w.Rec.mu.Unlock()
		return
	}
	w.Rec.mu.Lock()
	w.Rec.Finished[rid] = fr.CostMicros
	w.Rec.mu.Unlock()
	w.Rec.acked.Add(1)
}

// Setup creates n accounts with seeded tiers and initial grants, through the admin API, and
// waits until the ledger has folded the grants (so that the first admits can be funded).
func (w *Workload) Setup(ctx context.Context, n int) error {
	rng := rand.New(rand.NewPCG(w.Seed, 0))
	if w.Rec == nil {
		w.Rec = NewRecord()
	}
	tiers := []string{"pro", "pro", "pro", "plus", "plus", "free"}
	for i := 0; i < n; i++ {
		a := Account{ID: fmt.Sprintf("acct-%s-%02d", w.Name, i), Tier: tiers[rng.IntN(len(tiers))]}
		w.Accounts = append(w.Accounts, a)
		w.tier(ctx, a.ID, a.Tier)
		// Initial credits: 20..200 credits, never expiring.
		body := map[string]any{"grant_id": "g-init-" + a.ID, "amount_micros": (20 + rng.Int64N(180)) * 1_000_000, "source": "purchase", "priority": 100}
		var acc struct {
			EventID string `json:"event_id"`
		}
		code, err := w.H.Admin(ctx, w.Ledger.Addr, http.MethodPost, "/v1/accounts/"+a.ID+"/grants", body, &acc)
		if err != nil || code != http.StatusAccepted {
			return fmt.Errorf("setup grant %s: %d %v", a.ID, code, err)
		}
		w.Rec.Grants[acc.EventID] = a.ID
		w.Rec.acked.Add(1)
	}
	last := w.Accounts[len(w.Accounts)-1].ID
	return eventually(ctx, 60*time.Second, func() error {
		var v struct {
			AvailableMicros int64 `json:"available_micros"`
		}
		code, err := w.H.Admin(ctx, w.Ledger.Addr, http.MethodGet, "/v1/accounts/"+last, nil, &v)
		if err != nil || code != http.StatusOK || v.AvailableMicros == 0 {
			return fmt.Errorf("setup: ledger has not folded the grants yet (%d, %v)", code, err)
		}
		return nil
	})
}
