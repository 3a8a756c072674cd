package admitter

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/follow"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
)

// Finishes of requests this admitter did not admit: another admitter's, or its own earlier
// incarnation's (lost at a restart). Their request.started is in the events log, where the
// peer follower keeps them (Service.peers); the finish is priced with the start's endpoint and
// model, published as request.finished (acks=all) and answered with the settlement, and the
// answer is cached for repeats like any other. The ledger settles the hold it holds from the
// start; a second request.finished of the same request (two admitters finishing it at once) is
// a duplicate it ignores.

// awaitLogCurrent waits until the peer follower has applied every partition of the events
// topic up to its end offset as of this call, so that any request.started acknowledged before
// the call is in s.peers (or was not kept: ADMITTER_LOG_OPEN_MAX). It is bounded by
// ADMITTER_PUBLISH_TIMEOUT_MS; beyond it the answer is 503 unavailable (retry): a 404 could be
// wrong while the start may still be unread.
func (s *Service) awaitLogCurrent(ctx context.Context) *httpx.Error {
	err := s.peerLog.Current(ctx, time.Now().Add(ms(s.cfg.PublishTimeoutMs)))
	switch {
	case errors.Is(err, follow.ErrBehind):
		return unavailable("events log not read up to date yet; retry")
	case err != nil:
		return unavailable("events log: %v; retry", err)
	}
	return nil
}

// finishFromLogLocked finishes req, a request this admitter holds no record of, from the log
// index; it is called with s.mu held and unlocks it.
func (s *Service) finishFromLogLocked(w http.ResponseWriter, r *http.Request, keyID string, req *api.FinishRequest) {
	po, ok := s.peers[req.RequestID]
	switch {
	case !ok:
		s.mu.Unlock()
		httpx.WriteError(w, httpx.Errorf(http.StatusNotFound, api.CodeUnknownRequest,
			"request %q: no request.started in the events log (never admitted, or its hold expired)", req.RequestID))
		return
	case po.fin != nil: // finished before (here or elsewhere): a repeat
		f := po.fin
		s.mu.Unlock()
		if f.status != req.Status || f.resolution != req.Usage.Resolution || f.usage != usageKey(req.Usage) {
			httpx.WriteError(w, httpx.Errorf(http.StatusConflict, api.CodeRequestIDReused, "request %q was already finished with different usage", req.RequestID))
			return
		}
		body, _ := json.Marshal(f.resp)
		s.m.replays.Inc()
		writeAnswer(w, http.StatusOK, body, 0)
		return
	case po.expiresAtMs <= time.Now().UnixMilli():
		s.mu.Unlock()
		httpx.WriteError(w, httpx.Errorf(http.StatusNotFound, api.CodeUnknownRequest, "request %q: its hold expired", req.RequestID))
		return
	}
	var cost int64
	var err error
	if req.Usage != (events.Units{}) { // no usage at all (e.g. a cancelled request) costs nothing
		cost, err = s.table.Price(po.endpoint, po.model, req.Usage)
	}
	if err != nil {
		s.mu.Unlock()
		httpx.WriteError(w, priceError(err))
		return
	}
	now := time.Now() // the finish event's time: the settlement is priced at it, as the ledger does
	q := s.table.QuotePeer(&po.peer, cost, now.UnixMilli())
	// A record for the request, pending its finish: a concurrent repeat waits for this answer.
	_, slot, _ := s.idem.Find(req.RequestID)
	ri := s.idem.AddFromLog(slot, req.RequestID, po.peer.AccountID, po.peer.FundingAccountID, po.endpoint, po.model)
	s.mu.Unlock()

	resp := finishAnswer(req.RequestID, &q, s.book.Version)
	part, off, err := s.publishFinish(r, req, keyID, po.peer.AccountID, po.peer.FundingAccountID, po.endpoint, po.model, &q, now)
	body, _ := json.Marshal(resp)
	s.mu.Lock()
	if err != nil { // forget the record: a retry finds the log request again
		s.idem.Forget(ri)
		s.mu.Unlock()
		httpx.WriteError(w, unavailable("event log unavailable: %v", err))
		return
	}
	if po, ok := s.peers[req.RequestID]; ok && po.fin == nil {
		s.settlePeerLocked(req.RequestID, &po, &events.RequestFinished{RequestID: req.RequestID, Status: req.Status,
			Usage: req.Usage, CostMicros: cost, PriceBookVersion: s.book.Version}, part, off, now.UnixMilli())
	}
	s.idem.Finished(ri, req, body)
	s.mu.Unlock()
	s.m.finishes.WithLabelValues(req.Status).Inc()
	s.m.logFinishes.Inc()
	writeAnswer(w, http.StatusOK, body, 0)
}
