package admitter

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"

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

var newline = []byte{'\n'}

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
		RetryAfterMs: d.RetryAfterMs, Funding: d.Funding.String(), FundingAccountID: d.FundingAccountID, Tier: d.Tier, Priority: d.Priority.String(),
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
	account, funder, endpoint, model := s.idem.Request(ri)
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
	part, off, err := s.publishFinish(r, &req, keyID, account, funder, endpoint, model, &q, now)
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
// which the settlement was priced) for the request's account, funding account (fixed at
// admission; "" the account's own), endpoint and model, and returns where it is durable.
func (s *Service) publishFinish(r *http.Request, req *api.FinishRequest, keyID, account, funder, endpoint, model string,
	q *decide.Settlement, now time.Time) (int32, int64, error) {
	value, name, err := encode(s.source, now, events.RequestFinished{RequestID: req.RequestID,
		AccountID: account, FundingAccountID: funder, Endpoint: endpoint, Model: model, Status: req.Status, Usage: req.Usage,
		CostMicros: q.CostMicros, AllowanceMicros: q.AllowanceMicros, CreditsMicros: q.CreditsMicros, OverageMicros: q.OverageMicros,
		DurationMs: req.DurationMs, PriceBookVersion: s.book.Version, KeyID: keyID, ClientAddr: clientAddr(r)})
	if err != nil {
		return 0, 0, err
	}
	return s.publish(r.Context(), name, eventKey(account, funder), value)
}

// eventKey is the Kafka key (and the envelope's subject) of a request's money events
// (request.started, request.finished): its funding account when it has one, so that they
// are in order with the funding account's other events on its partition; else its account.
func eventKey(account, funder string) string {
	if funder != "" {
		return funder
	}
	return account
}

func (s *Service) replayFinishLocked(w http.ResponseWriter, r *http.Request, ri uint32, req *api.FinishRequest) {
	ri, ok := s.awaitFirstLocked(w, r, req.RequestID, ri, true)
	if !ok {
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
