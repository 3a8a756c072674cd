package admitter

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/services/admitter/idem"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
)

// admission is one admit call on its way through handleAdmit's steps.
type admission struct {
	req    api.AdmitRequest
	keyID  string
	client string
	now    time.Time // the decision's time and the event's
	d      decide.Decision
	body   []byte // the answer
	// part and off are where the event is durable; published: the table knows it already
	// (confirmInLogOrder); revised: the answer changed after the record was added.
	part      int32
	off       int64
	published bool
	revised   bool
}

// status is the admit answer's HTTP status.
func (a *admission) status() int {
	if a.d.Allowed {
		return http.StatusOK
	}
	return http.StatusTooManyRequests
}

// handleAdmit answers POST /v1/admit: parse → idempotency lookup → decide → reserve →
// publish → record → answer. The event is durable (acks=all) before the answer; a repeat of
// the request_id waits for and replays the first answer. Service.mu is taken in two sections
// (plus one in confirmInLogOrder, with ADMITTER_CONFIRM_IN_LOG_ORDER); each says why.
func (s *Service) handleAdmit(w http.ResponseWriter, r *http.Request) {
	var a admission
	if herr := s.readAdmit(r, &a); herr != nil {
		httpx.WriteError(w, herr)
		return
	}
	bp := bodyPool.Get().(*[]byte)
	defer bodyPool.Put(bp)

	// Lock section 1: the idempotency lookup, the decision (which takes the hold, in-flight
	// slots and rate token from the shared table) and the pending record are one step, so that
	// two calls with one request_id never both decide: the second finds the pending record
	// and waits for its answer (replayAdmitLocked).
	s.mu.Lock()
	ri, slot, found := s.idem.Find(a.req.RequestID)
	if found {
		s.replayAdmitLocked(w, r, ri, &a.req) // unlocks
		return
	}
	t0 := time.Now()
	herr := s.decideLocked(&a)
	if herr == nil {
		ri = s.reserveLocked(&a, slot, (*bp)[:0])
	}
	s.mu.Unlock()
	if herr != nil {
		httpx.WriteError(w, herr)
		return
	}
	s.m.decisionSec.Observe(time.Since(t0).Seconds())

	err := s.publishAdmit(r.Context(), &a) // no lock held while Kafka acknowledges
	if err == nil && a.d.Allowed && s.confirming() {
		s.confirmInLogOrder(r.Context(), &a)
	}
	*bp = a.body
	s.recordAdmit(ri, &a, err) // lock section 2
	s.answerAdmit(w, &a, err)
}

// readAdmit authenticates and reads an admit body: every input error is answered here.
func (s *Service) readAdmit(r *http.Request, a *admission) *httpx.Error {
	keyID, herr := s.auth(r)
	if herr != nil {
		return herr
	}
	// Decoded into a local (it escapes, through the decoder's interface), not into a: the
	// admission with its decision would escape with it.
	var req api.AdmitRequest
	if herr := httpx.DecodeJSON(r, s.cfg.BodyBytesMax, &req); herr != nil {
		return herr
	}
	if err := req.Validate(); err != nil {
		return httpx.Validation(err)
	}
	if !s.ready.Load() {
		return unavailable("loading balances and limits")
	}
	if !s.table.Endpoint(req.Endpoint) {
		return httpx.Errorf(http.StatusNotFound, httpx.CodeNotFound, "unknown endpoint %q", req.Endpoint)
	}
	if req.RequestID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return unavailable("request id: %v", err)
		}
		req.RequestID = id.String()
	}
	a.req, a.keyID, a.client, a.now = req, keyID, clientAddr(r), time.Now()
	return nil
}

// decideLocked decides a (s.mu held): an error answer when the request cannot be priced or the
// admitter's state is at its bound.
func (s *Service) decideLocked(a *admission) *httpx.Error {
	err := s.table.Admit(&decide.Request{AccountID: a.req.AccountID, Endpoint: a.req.Endpoint, Model: a.req.Model,
		Priority: a.req.Priority, Estimate: a.req.Estimate}, a.now.UnixMilli(), &a.d)
	switch {
	case err != nil:
		return priceError(err)
	case a.d.Reason == decide.ReasonTableFull:
		return unavailable("admitter state at its bound (accounts, open requests or pending changes)")
	}
	return nil
}

// reserveLocked writes a's answer into buf and adds the pending record of a's request_id
// with it at slot (s.mu held): the record is created once, with its answer, and stays
// pending (repeats wait) until recordAdmit.
func (s *Service) reserveLocked(a *admission, slot idem.Slot, buf []byte) idem.Ref {
	a.body = s.appendAdmit(buf, &a.req, &a.d)
	return s.idem.Add(slot, &a.req, a.d.FundingAccountID, a.keyID, a.client, a.body)
}

// publishAdmit makes a's request.started (allowed) or request.rejected durable and notes
// where.
func (s *Service) publishAdmit(ctx context.Context, a *admission) error {
	vp := bodyPool.Get().(*[]byte)
	value, name, err := s.admitEvent((*vp)[:0], a.keyID, a.client, &a.req, &a.d, a.now)
	if err == nil {
		key := a.req.AccountID // a rejection is the account's (no money)
		if a.d.Allowed {
			key = eventKey(a.req.AccountID, a.d.FundingAccountID)
		}
		a.part, a.off, err = s.publish(ctx, name, key, value)
	}
	if err == nil && s.pub == Publisher(s.producer) && s.producer.ValueReusable() { // acknowledged: the producer holds no reference to it
		*vp = value
		bodyPool.Put(vp)
	}
	return err
}

// recordAdmit ends the admission in the idempotency store and the decision table: the answer
// recorded (repeats replay it; an allowed request is open), or, when the event was not
// acknowledged (err), the reservation given back and the request_id forgotten, so that a
// retry decides afresh.
func (s *Service) recordAdmit(ri idem.Ref, a *admission, err error) {
	// Lock section 2: the record becomes answered (waiters wake) in the same step as the
	// table learns the event's position, or as the reservation is undone; it cannot be part
	// of section 1, as the event is published in between, without the lock.
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if a.d.Allowed {
			s.table.Abort(a.d.Handle)
		}
		s.idem.Forget(ri)
		return
	}
	if a.revised {
		s.idem.SetAdmitBody(ri, a.body)
	}
	if a.d.Allowed && !a.published {
		s.table.Published(a.d.Handle, a.part, a.off)
	}
	s.idem.Answered(ri, a.status(), a.d.RetryAfterMs, a.d.Allowed, a.d.Handle)
	s.m.open.Set(float64(s.table.OpenRequests()))
}

// answerAdmit writes the admit answer, or 503 when the event was not acknowledged (err).
func (s *Service) answerAdmit(w http.ResponseWriter, a *admission, err error) {
	if err != nil {
		s.log.Warn("admit not answered: event not acknowledged", "request_id", a.req.RequestID, "err", err)
		httpx.WriteError(w, unavailable("event log unavailable: %v", err))
		return
	}
	reason := "allowed"
	if !a.d.Allowed {
		reason = a.d.Reason.String()
	}
	s.m.decisions.WithLabelValues(reason, a.d.Funding.String()).Inc()
	writeAnswer(w, a.status(), a.body, a.d.RetryAfterMs)
}

// bodyPool recycles the buffers the admit answers (the cache keeps an exact-size copy) and
// their events are written in.
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, eventBytesEst); return &b }}

// confirmInLogOrder applies the log-order rule to an allowed admission whose event is
// durable (revokeIfUncovered); a revoked admission's answer is rewritten as the denial.
func (s *Service) confirmInLogOrder(ctx context.Context, a *admission) {
	// Lock section 3 (only here): the table learns the event's position at once, before the
	// wait for the peer follower, as the rule counts what precedes it in the log and a
	// balance update folding the event may arrive meanwhile (Table.Published).
	s.mu.Lock()
	s.table.Published(a.d.Handle, a.part, a.off)
	s.mu.Unlock()
	a.published = true
	if s.revokeIfUncovered(ctx, a.keyID, a.client, &a.req, &a.d, a.part, a.off, a.now) {
		a.body = s.appendAdmit(a.body[:0], &a.req, &a.d)
		a.revised = true
	}
}

// revokeIfUncovered applies the log-order rule (decide.Table.FundedInLogOrder) to an
// admission whose request.started is durable at (part, off). When it is not covered, it
// publishes a cost-0 cancelled request.finished, settles the request locally and turns d into
// an insufficient_credits denial; it reports whether it did. When the peer follower does not
// reach the offset within ADMITTER_PUBLISH_TIMEOUT_MS, or the cancel cannot be published, the
// admission stands (the documented propagation bound applies).
func (s *Service) revokeIfUncovered(ctx context.Context, keyID, client string, req *api.AdmitRequest, d *decide.Decision, part int32, off int64, now time.Time) bool {
	if !s.peerLog.WaitPosition(part, off, time.Now().Add(ms(s.cfg.PublishTimeoutMs))) {
		s.m.confirmTimeouts.Inc()
		return false
	}
	s.mu.Lock()
	money := eventKey(req.AccountID, d.FundingAccountID) // the funding account's position and balance
	ok := s.table.FundedInLogOrder(money, d.HoldMicros, d.AllowanceMicros, part, off, now.UnixMilli())
	q, qerr := s.table.Quote(d.Handle, 0, now.UnixMilli())
	s.mu.Unlock()
	if ok || qerr != nil {
		return false
	}
	value, name, err := encode(s.source, time.Now(), events.RequestFinished{RequestID: req.RequestID,
		AccountID: req.AccountID, FundingAccountID: d.FundingAccountID, Endpoint: req.Endpoint, Model: req.Model,
		Status: events.StatusCancelled, PriceBookVersion: s.book.Version, KeyID: keyID, ClientAddr: client})
	var p2 int32
	var o2 int64
	if err == nil {
		p2, o2, err = s.publish(ctx, name, money, value)
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
	ri, ok := s.awaitFirstLocked(w, r, req.RequestID, ri, false)
	if !ok {
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

// awaitFirstLocked waits, with s.mu held, for the first call with requestID (record ri; finish:
// the first finish) to be answered, and returns its record with s.mu still held. When that
// call was cancelled or failed it answers 503, with s.mu released, and returns false.
func (s *Service) awaitFirstLocked(w http.ResponseWriter, r *http.Request, requestID string, ri uint32, finish bool) (uint32, bool) {
	ri, out := s.idem.Await(r.Context(), &s.mu, requestID, ri, finish)
	switch out {
	case idem.WaitCancelled:
		httpx.WriteError(w, unavailable("request cancelled while waiting for the first call"))
		return 0, false
	case idem.WaitFailed:
		what := "call"
		if finish {
			what = "finish"
		}
		httpx.WriteError(w, unavailable("the first %s with this request_id failed; retry", what))
		return 0, false
	}
	return ri, true
}

func (s *Service) admitEvent(buf []byte, keyID, client string, req *api.AdmitRequest, d *decide.Decision, now time.Time) ([]byte, string, error) {
	var data events.Data
	if d.Allowed {
		data = events.RequestStarted{RequestID: req.RequestID, AccountID: req.AccountID, FundingAccountID: d.FundingAccountID, Endpoint: req.Endpoint,
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
