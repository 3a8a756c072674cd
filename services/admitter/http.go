package admitter

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/services/admitter/idem"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/pricebook"
)

// Handler is the admitter's HTTP API.
func (s *Service) Handler() http.Handler {
	routes := s.routes()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.m.httpInflight.Inc()
		defer s.m.httpInflight.Dec()
		rt, ok := routes[r.URL.Path]
		switch {
		case !ok:
			httpx.NotFound(w, r)
		case r.Method != rt.method:
			w.Header().Set("Allow", rt.method)
			httpx.WriteError(w, httpx.Errorf(http.StatusMethodNotAllowed, httpx.CodeMethodNotAllowed, "%s %s: use %s", r.Method, r.URL.Path, rt.method))
		default:
			rt.h(w, r)
		}
	})
	return httpx.Recover(h, func(p any) { s.log.Error("panic in handler", "panic", p) })
}

type route struct {
	method string
	h      http.HandlerFunc
}

// routes is the routing table: one method per path (api/openapi.json documents each).
func (s *Service) routes() map[string]route {
	return map[string]route{
		api.PathAdmit:   {http.MethodPost, s.handleAdmit},
		api.PathFinish:  {http.MethodPost, s.handleFinish},
		"/healthz":      {http.MethodGet, s.handleHealthz},
		"/readyz":       {http.MethodGet, s.handleReadyz},
		"/metrics":      {http.MethodGet, promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{}).ServeHTTP},
		"/openapi.json": {http.MethodGet, func(w http.ResponseWriter, _ *http.Request) { writeAnswer(w, http.StatusOK, api.OpenAPI, 0) }},
	}
}

func (s *Service) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Service) handleReadyz(w http.ResponseWriter, _ *http.Request) {
	if !s.ready.Load() {
		httpx.WriteError(w, httpx.Errorf(http.StatusServiceUnavailable, httpx.CodeUnavailable, "loading balances and limits"))
		return
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"status": "ready", "price_book_version": s.book.Version})
}

// auth authenticates the bearer API key. A refusal is logged at DEBUG (DEBUG, so that a
// flood of bad keys cannot flood the logs) with the route, the peer and the code, never
// with the presented token.
func (s *Service) auth(r *http.Request) (string, *httpx.Error) {
	id, herr := s.keys.Load().Authenticate(r)
	if herr != nil {
		s.log.Debug("api key refused", "path", r.URL.Path, "remote", r.RemoteAddr, "code", herr.Code)
	}
	return id, herr
}

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil || events.CheckID("client_addr", host) != nil {
		return ""
	}
	return host
}

func unavailable(format string, a ...any) *httpx.Error {
	return httpx.Errorf(http.StatusServiceUnavailable, httpx.CodeUnavailable, format, a...)
}

// readAdmit authenticates and reads an admit body: every input error is answered here.
func (s *Service) readAdmit(r *http.Request) (api.AdmitRequest, string, *httpx.Error) {
	var req api.AdmitRequest
	keyID, herr := s.auth(r)
	if herr != nil {
		return req, "", herr
	}
	if herr := httpx.DecodeJSON(r, s.cfg.BodyBytesMax, &req); herr != nil {
		return req, "", herr
	}
	if err := req.Validate(); err != nil {
		return req, "", httpx.Validation(err)
	}
	if !s.ready.Load() {
		return req, "", unavailable("loading balances and limits")
	}
	if !s.table.Endpoint(req.Endpoint) {
		return req, "", httpx.Errorf(http.StatusNotFound, httpx.CodeNotFound, "unknown endpoint %q", req.Endpoint)
	}
	if req.RequestID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return req, "", unavailable("request id: %v", err)
		}
		req.RequestID = id.String()
	}
	return req, keyID, nil
}

// handleAdmit decides under the lock, publishes the event outside it (acks=all), and only
// then records and answers; a repeat of the request_id waits for and replays the answer.
func (s *Service) handleAdmit(w http.ResponseWriter, r *http.Request) {
	req, keyID, herr := s.readAdmit(r)
	if herr != nil {
		httpx.WriteError(w, herr)
		return
	}
	now := time.Now()
	s.mu.Lock()
	ri, slot, found := s.idem.Find(req.RequestID)
	if found {
		s.replayAdmitLocked(w, r, ri, &req) // unlocks
		return
	}
	var d decide.Decision
	t0 := time.Now()
	err := s.table.Admit(&decide.Request{AccountID: req.AccountID, Endpoint: req.Endpoint, Model: req.Model,
		Priority: req.Priority, Estimate: req.Estimate}, now.UnixMilli(), &d)
	if err != nil || d.Reason == decide.ReasonTableFull {
		s.mu.Unlock()
		if err != nil {
			httpx.WriteError(w, priceError(err))
		} else {
			httpx.WriteError(w, unavailable("admitter state at its bound (accounts, open requests or pending changes)"))
		}
		return
	}
	status := http.StatusOK
	if !d.Allowed {
		status = http.StatusTooManyRequests
	}
	// The answer is written under the lock, so that the record is created once with it (a
	// repeat cannot see it before the event is durable: the record stays pending until then).
	bp := bodyPool.Get().(*[]byte)
	defer bodyPool.Put(bp)
	body := s.appendAdmit((*bp)[:0], &req, &d)
	client := clientAddr(r)
	ri = s.idem.Add(slot, &req, keyID, client, body)
	s.mu.Unlock()
	s.m.decisionSec.Observe(time.Since(t0).Seconds())

	vp := bodyPool.Get().(*[]byte)
	value, name, err := s.admitEvent((*vp)[:0], keyID, client, &req, &d, now)
	var part int32
	var off int64
	if err == nil {
		part, off, err = s.publish(r.Context(), name, req.AccountID, value)
	}
	if err == nil && s.pub == Publisher(s.producer) && s.producer.ValueReusable() { // acknowledged: the producer holds no reference to it
		*vp = value
		bodyPool.Put(vp)
	}
	published := false
	if err == nil && d.Allowed && s.confirming() {
		s.mu.Lock()
		s.table.Published(d.Handle, part, off)
		s.mu.Unlock()
		published = true
		if s.revokeIfUncovered(r.Context(), keyID, client, &req, &d, part, off, now) {
			status = http.StatusTooManyRequests
			body = s.appendAdmit(body[:0], &req, &d)
			s.mu.Lock()
			s.idem.SetAdmitBody(ri, body)
			s.mu.Unlock()
		}
	}
	*bp = body
	if err != nil {
		s.abortAdmit(ri, &d)
		s.log.Warn("admit not answered: event not acknowledged", "request_id", req.RequestID, "err", err)
		httpx.WriteError(w, unavailable("event log unavailable: %v", err))
		return
	}
	s.mu.Lock()
	if d.Allowed && !published {
		s.table.Published(d.Handle, part, off)
	}
	s.idem.Answered(ri, status, d.RetryAfterMs, d.Allowed, d.Handle)
	s.m.open.Set(float64(s.table.OpenRequests()))
	s.mu.Unlock()
	reason := "allowed"
	if !d.Allowed {
		reason = d.Reason.String()
	}
	s.m.decisions.WithLabelValues(reason, d.Funding.String()).Inc()
	writeAnswer(w, status, body, d.RetryAfterMs)
}

// bodyPool recycles the buffers the admit answers (the cache keeps an exact-size copy) and
// their events are written in.
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

var newline = []byte{'\n'}

// abortAdmit gives back an admission whose event was not acknowledged and forgets the
// request_id, so that a retry decides afresh.
func (s *Service) abortAdmit(ri uint32, d *decide.Decision) {
	s.mu.Lock()
	if d.Allowed {
		s.table.Abort(d.Handle)
	}
	s.idem.Forget(ri)
	s.mu.Unlock()
}

func writeAnswer(w http.ResponseWriter, status int, body []byte, retryAfterMs int64) {
	w.Header().Set("Content-Type", "application/json")
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", strconv.FormatInt((retryAfterMs+999)/1000, 10))
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	_, _ = w.Write(body)
	_, _ = w.Write(newline)
}

func (s *Service) confirming() bool {
	return s.cfg.ConfirmInLogOrder && s.cfg.FollowPeers && s.cfg.Instances > 1
}

// revokeIfUncovered applies the log-order rule (decide.Table.FundedInLogOrder) to an
// admission whose request.started is durable at (part, off). When it is not covered, it
// publishes a cost-0 cancelled request.finished, settles the request locally and turns d into
// an insufficient_credits denial; it reports whether it did. When the peer follower does not
// reach the offset within ADMITTER_PUBLISH_TIMEOUT_MS, or the cancel cannot be published, the
// admission stands (the documented propagation bound applies).
func (s *Service) revokeIfUncovered(ctx context.Context, keyID, client string, req *api.AdmitRequest, d *decide.Decision, part int32, off int64, now time.Time) bool {
	if !s.waitPeerPosition(part, off, time.Now().Add(ms(s.cfg.PublishTimeoutMs))) {
		s.m.confirmTimeouts.Inc()
		return false
	}
	s.mu.Lock()
	ok := s.table.FundedInLogOrder(req.AccountID, d.HoldMicros, d.AllowanceMicros, part, off, now.UnixMilli())
	q, qerr := s.table.Quote(d.Handle, 0, now.UnixMilli())
	s.mu.Unlock()
	if ok || qerr != nil {
		return false
	}
	value, name, err := encode(s.source, time.Now(), events.RequestFinished{RequestID: req.RequestID,
		AccountID: req.AccountID, Endpoint: req.Endpoint, Model: req.Model, Status: events.StatusCancelled,
		PriceBookVersion: s.book.Version, KeyID: keyID, ClientAddr: client})
	var p2 int32
	var o2 int64
	if err == nil {
		p2, o2, err = s.publish(ctx, name, req.AccountID, value)
	}
	if err != nil {
		s.log.Warn("log-order revoke not published; admission stands", "request_id", req.RequestID, "err", err)
		return false
	}
	s.mu.Lock()
	_ = s.table.Finish(d.Handle, q, time.Now().UnixMilli(), decide.OutcomeNone, p2, o2)
	s.mu.Unlock()
	s.m.revoked.Inc()
	d.Allowed, d.Reason, d.RetryAfterMs = false, decide.ReasonInsufficientCredits, s.cfg.RetryInsufficientMs
	d.AvailableMicros += d.HoldMicros
	for i := 0; i < d.NumWindows; i++ {
		d.Windows[i].UsedMicros -= d.AllowanceMicros
		d.Windows[i].RemainingMicros += d.AllowanceMicros
	}
	d.Funding, d.HoldMicros, d.AllowanceMicros = decide.FundingNone, 0, 0
	return true
}

// replayAdmitLocked answers a repeated request_id (record ri) with the first answer,
// publishing nothing; it is called with s.mu held and unlocks it. While the first call is
// being decided and published it waits; if that call failed (its record is gone or another
// call took the id since), the answer is 503.
func (s *Service) replayAdmitLocked(w http.ResponseWriter, r *http.Request, ri uint32, req *api.AdmitRequest) {
	ri, out := s.idem.Await(r.Context(), &s.mu, req.RequestID, ri, false)
	switch out {
	case idem.WaitCancelled:
		httpx.WriteError(w, unavailable("request cancelled while waiting for the first call"))
		return
	case idem.WaitFailed:
		httpx.WriteError(w, unavailable("the first call with this request_id failed; retry"))
		return
	}
	if !s.idem.SameAdmit(ri, req) {
		s.mu.Unlock()
		httpx.WriteError(w, httpx.Errorf(http.StatusConflict, api.CodeRequestIDReused, "request_id %q was used with different parameters", req.RequestID))
		return
	}
	status, retry, body := s.idem.AdmitAnswer(ri)
	s.mu.Unlock()
	s.m.replays.Inc()
	writeAnswer(w, status, body, retry)
}

func priceError(err error) *httpx.Error {
	switch {
	case errors.Is(err, decide.ErrUnknownEndpoint), errors.Is(err, pricebook.ErrUnknownEndpoint):
		return httpx.Errorf(http.StatusNotFound, httpx.CodeNotFound, "unknown endpoint")
	case errors.Is(err, pricebook.ErrUnknownModel):
		return httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "model: unknown for this endpoint")
	case errors.Is(err, pricebook.ErrUnknownResolution):
		return httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "resolution: unknown for this endpoint")
	}
	return httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "price: %v", err)
}

func (s *Service) admitResponse(req *api.AdmitRequest, d *decide.Decision) api.AdmitResponse {
	resp := api.AdmitResponse{RequestID: req.RequestID, Allowed: d.Allowed, Reason: d.Reason.String(),
		RetryAfterMs: d.RetryAfterMs, Funding: d.Funding.String(), Tier: d.Tier, Priority: d.Priority.String(),
		EstimateMicros: d.EstimateMicros, ReservedMicros: d.HoldMicros + d.AllowanceMicros, HoldMicros: d.HoldMicros,
		AllowanceMicros: d.AllowanceMicros, PriceBookVersion: s.book.Version,
		Remaining: api.Remaining{AvailableMicros: d.AvailableMicros, Allowance: []api.Window{},
			RatePerMinute: d.RatePerMinute, Burst: d.Burst, RateRemaining: d.RateRemaining,
			ConcurrencyLimit: d.ConcurrencyLimit, InFlight: d.InFlight, EndpointInFlight: d.EndpointInFlight,
			EndpointCapacity: d.EndpointCapacity, LoadFactorPermille: d.LoadFactorPermille,
			HistoryFactorPermille: d.HistoryFactorPermille}}
	if d.Allowed {
		resp.RetryAfterMs = 0
		t := time.UnixMilli(d.HoldExpiresAtMs).UTC()
		resp.HoldExpiresAt = &t
	}
	for i := 0; i < d.NumWindows; i++ {
		wd := &d.Windows[i]
		resp.Remaining.Allowance = append(resp.Remaining.Allowance, api.Window{Name: wd.Name, LimitMicros: wd.LimitMicros,
			UsedMicros: wd.UsedMicros, RemainingMicros: wd.RemainingMicros, ResetsAt: time.UnixMilli(wd.ResetsAtMs).UTC()})
	}
	return resp
}

func (s *Service) admitEvent(buf []byte, keyID, client string, req *api.AdmitRequest, d *decide.Decision, now time.Time) ([]byte, string, error) {
	var data events.Data
	if d.Allowed {
		data = events.RequestStarted{RequestID: req.RequestID, AccountID: req.AccountID, Endpoint: req.Endpoint,
			Model: req.Model, Tier: d.Tier, Priority: d.Priority.String(), Funding: d.Funding.String(),
			Estimate: req.Estimate, EstimateMicros: d.EstimateMicros, HoldMicros: d.HoldMicros,
			AllowanceMicros: d.AllowanceMicros, HoldExpiresAt: time.UnixMilli(d.HoldExpiresAtMs).UTC(),
			PriceBookVersion: s.book.Version, KeyID: keyID, ClientAddr: client}
	} else {
		data = events.RequestRejected{RequestID: req.RequestID, AccountID: req.AccountID, Endpoint: req.Endpoint,
			Model: req.Model, Tier: d.Tier, Priority: d.Priority.String(), Reason: d.Reason.String(),
			RetryAfterMs: d.RetryAfterMs, EstimateMicros: d.EstimateMicros, PriceBookVersion: s.book.Version,
			KeyID: keyID, ClientAddr: client}
	}
	return encodeTo(buf, s.source, now, data)
}

// publish makes one event durable, bounded by ADMITTER_PUBLISH_TIMEOUT_MS.
func (s *Service) publish(ctx context.Context, eventType, key string, value []byte) (int32, int64, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ms(s.cfg.PublishTimeoutMs))
	defer cancel()
	t0 := time.Now()
	p, o, err := s.pub.Publish(ctx, key, value)
	s.m.publishSec.WithLabelValues(eventType).Observe(time.Since(t0).Seconds())
	if err != nil {
		s.m.publishErrors.WithLabelValues(eventType).Inc()
	}
	return p, o, err
}

func (s *Service) handleFinish(w http.ResponseWriter, r *http.Request) {
	// The adaptive limit's latency sample is the admitter's own: from the admission to the
	// arrival of this finish (the client's duration_ms is recorded on the event, not trusted).
	arrivedMs := time.Now().UnixMilli()
	keyID, herr := s.auth(r)
	if herr != nil {
		httpx.WriteError(w, herr)
		return
	}
	var req api.FinishRequest
	if herr := httpx.DecodeJSON(r, s.cfg.BodyBytesMax, &req); herr != nil {
		httpx.WriteError(w, herr)
		return
	}
	if err := req.Validate(); err != nil {
		httpx.WriteError(w, httpx.Validation(err))
		return
	}
	s.mu.Lock()
	ri, ok := s.idem.Lookup(req.RequestID)
	if !ok && s.cfg.FollowPeers {
		if _, inLog := s.peers[req.RequestID]; !inLog {
			// Its start may be in the log but not read yet: read up to the current end first.
			s.mu.Unlock()
			if herr := s.awaitLogCurrent(r.Context()); herr != nil {
				httpx.WriteError(w, herr)
				return
			}
			s.mu.Lock()
			ri, ok = s.idem.Lookup(req.RequestID)
		}
		if !ok {
			s.finishFromLogLocked(w, r, keyID, &req) // unlocks
			return
		}
	}
	if !ok {
		s.mu.Unlock()
		httpx.WriteError(w, unknownRequest(req.RequestID))
		return
	}
	ri, out := s.idem.Await(r.Context(), &s.mu, req.RequestID, ri, false) // an admit still being published
	switch out {
	case idem.WaitCancelled:
		httpx.WriteError(w, unavailable("request cancelled"))
		return
	case idem.WaitFailed: // the admit failed
		httpx.WriteError(w, unknownRequest(req.RequestID))
		return
	}
	if !s.idem.Allowed(ri) {
		s.mu.Unlock()
		httpx.WriteError(w, unknownRequest(req.RequestID))
		return
	}
	if s.idem.Fin(ri) != idem.FinNone {
		s.replayFinishLocked(w, r, ri, &req) // unlocks
		return
	}
	handle, open := s.idem.Open(ri)
	if !open {
		s.mu.Unlock()
		httpx.WriteError(w, httpx.Errorf(http.StatusNotFound, api.CodeUnknownRequest, "request %q: its hold expired", req.RequestID))
		return
	}
	account, endpoint, model := s.idem.Request(ri)
	var cost int64
	var err error
	if req.Usage != (events.Units{}) { // no usage at all (e.g. a cancelled request) costs nothing
		cost, err = s.table.Price(endpoint, model, req.Usage)
	}
	if err != nil {
		s.mu.Unlock()
		httpx.WriteError(w, priceError(err))
		return
	}
	now := time.Now() // the finish event's time: the settlement is priced at it, as the ledger does
	q, err := s.table.Quote(handle, cost, now.UnixMilli())
	if err != nil {
		s.mu.Unlock()
		httpx.WriteError(w, unknownRequest(req.RequestID))
		return
	}
	s.idem.BeginFinish(ri)
	s.mu.Unlock()

	resp := finishAnswer(req.RequestID, &q, s.book.Version)
	part, off, err := s.publishFinish(r, &req, keyID, account, endpoint, model, &q, now)
	body, _ := json.Marshal(resp)
	s.mu.Lock()
	// The record cannot have left the cache meanwhile: only answered records that are neither
	// open nor being finished are in the FIFO.
	if err != nil {
		s.idem.FinishFailed(ri)
		s.mu.Unlock()
		httpx.WriteError(w, unavailable("event log unavailable: %v", err))
		return
	}
	if handle, open := s.idem.Open(ri); open {
		_ = s.table.Finish(handle, q, arrivedMs, decide.FinishOutcome(req.Status), part, off)
		s.idem.Settle(ri)
	}
	s.idem.Finished(ri, &req, body)
	s.m.open.Set(float64(s.table.OpenRequests()))
	s.mu.Unlock()
	s.m.finishes.WithLabelValues(req.Status).Inc()
	writeAnswer(w, http.StatusOK, body, 0)
}

// replayFinishLocked answers a repeated finish of record ri; it is called with s.mu held and
// unlocks it.
// finishAnswer is the answer to a finish of requestID settled as q, priced by the book of
// priceBookVersion: the same whichever admitter settles it (its own request, one read from
// the log, or another admitter's finish read by the follower).
func finishAnswer(requestID string, q *decide.Settlement, priceBookVersion string) api.FinishResponse {
	return api.FinishResponse{RequestID: requestID, Funding: q.Funding.String(), CostMicros: q.CostMicros,
		ChargedMicros: q.ChargedMicros, ReleasedMicros: q.ReleasedMicros, OverageMicros: q.OverageMicros,
		AllowanceMicros: q.AllowanceMicros, CreditsMicros: q.CreditsMicros, PriceBookVersion: priceBookVersion}
}

// publishFinish publishes req's request.finished, settled as q at now (the event's time, at
// which the settlement was priced) for the request's account, endpoint and model, and
// returns where it is durable.
func (s *Service) publishFinish(r *http.Request, req *api.FinishRequest, keyID, account, endpoint, model string,
	q *decide.Settlement, now time.Time) (int32, int64, error) {
	value, name, err := encode(s.source, now, events.RequestFinished{RequestID: req.RequestID,
		AccountID: account, Endpoint: endpoint, Model: model, Status: req.Status, Usage: req.Usage,
		CostMicros: q.CostMicros, AllowanceMicros: q.AllowanceMicros, CreditsMicros: q.CreditsMicros, OverageMicros: q.OverageMicros,
		DurationMs: req.DurationMs, PriceBookVersion: s.book.Version, KeyID: keyID, ClientAddr: clientAddr(r)})
	if err != nil {
		return 0, 0, err
	}
	return s.publish(r.Context(), name, account, value)
}

func (s *Service) replayFinishLocked(w http.ResponseWriter, r *http.Request, ri uint32, req *api.FinishRequest) {
	ri, out := s.idem.Await(r.Context(), &s.mu, req.RequestID, ri, true)
	switch out {
	case idem.WaitCancelled:
		httpx.WriteError(w, unavailable("request cancelled while waiting for the first call"))
		return
	case idem.WaitFailed:
		httpx.WriteError(w, unavailable("the first finish with this request_id failed; retry"))
		return
	}
	if s.idem.Fin(ri) != idem.FinDone {
		s.mu.Unlock()
		httpx.WriteError(w, unavailable("the first finish with this request_id failed; retry"))
		return
	}
	if !s.idem.SameFinish(ri, req) {
		s.mu.Unlock()
		httpx.WriteError(w, httpx.Errorf(http.StatusConflict, api.CodeRequestIDReused, "request %q was already finished with different usage", req.RequestID))
		return
	}
	body := s.idem.FinishAnswer(ri)
	s.mu.Unlock()
	s.m.replays.Inc()
	writeAnswer(w, http.StatusOK, body, 0)
}

func unknownRequest(id string) *httpx.Error {
	return httpx.Errorf(http.StatusNotFound, api.CodeUnknownRequest, "request %q was not admitted by this admitter", id)
}
