// Package api is the ledger's HTTP edge: account views, the cached journal, admin writes
// that publish events (grants, purchases, adjustments, account updates) with acks=all, and
// the customer routes, read-only and scoped to one account or organisation (customer.go).
package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/pricebook"
)

// Source is the CloudEvents source of events the API publishes.
const Source = "urn:tally:ledger-api"

// Reader serves the folded state.
type Reader interface {
	Account(id string) (view.Account, bool)
	Entries(id string, q view.EntriesQuery) (view.Entries, bool)
	Ready() bool
}

// Publisher durably publishes one input event (acks=all) to the events topic.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// Config bounds the API.
type Config struct {
	Admin *httpx.Keyring
	// Customers returns the customer keys in force (LEDGER_CUSTOMER_KEYS_FILE, reloaded when
	// it changes); nil or a nil result refuses every customer token.
	Customers func() *CustomerKeys
	Book      *pricebook.Book
	// BodyBytesMax bounds a request body.
	BodyBytesMax int64
	// PageMax bounds the entries per page (and is the default page size).
	PageMax int
	// PublishTimeout bounds one publish.
	PublishTimeout time.Duration
	Logger         *slog.Logger
	Gatherer       prometheus.Gatherer
	Now            func() time.Time
	// Peers are the base URLs of the other ledger instances (LEDGER_PEERS). Asked to read an
	// account it does not know, an instance asks them in turn (see fromPeers).
	Peers []string
	// PeerClient makes the requests to peers; its Timeout bounds each (LEDGER_PEER_TIMEOUT_MS).
	PeerClient *http.Client
}

// ForwardedHeader marks a request one instance makes to a peer: the peer answers from its own
// state only, so a request is forwarded at most once and never loops.
const ForwardedHeader = "X-Tally-Forwarded"

// peerAnswerBytesMax bounds a peer's answer that is relayed (16 MiB; a page of LEDGER_PAGE_MAX
// entries is far smaller).
const peerAnswerBytesMax = 16 << 20

// Route is one routed method and path (as in the OpenAPI document).
type Route struct{ Method, Path string }

// Routes lists every route; openapi_test.go checks it against openapi.json.
var Routes = []Route{
	{"GET", "/v1/accounts/{id}"},
	{"PUT", "/v1/accounts/{id}"},
	{"GET", "/v1/accounts/{id}/entries"},
	{"POST", "/v1/accounts/{id}/grants"},
	{"POST", "/v1/accounts/{id}/adjustments"},
	{"POST", "/v1/accounts/{id}/purchases"},
	{"GET", "/v1/customer/accounts/{id}"},
	{"GET", "/v1/customer/accounts/{id}/requests"},
	{"GET", "/v1/customer/accounts/{id}/usage"},
	{"PUT", "/v1/accounts/{id}/subscription"},
	{"DELETE", "/v1/accounts/{id}/subscription"},
	{"PUT", "/v1/accounts/{id}/budgets/{project}"},
	{"DELETE", "/v1/accounts/{id}/budgets/{project}"},
	{"GET", "/metrics"},
	{"GET", "/healthz"},
	{"GET", "/readyz"},
}

type server struct {
	cfg Config
	r   Reader
	pub Publisher
}

// Handler returns the ledger's HTTP handler.
func Handler(cfg Config, r Reader, pub Publisher) http.Handler {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PeerClient == nil {
		cfg.PeerClient = &http.Client{Timeout: 5 * time.Second}
	}
	s := &server{cfg: cfg, r: r, pub: pub}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/accounts/{id}", s.admin(s.getAccount))
	mux.HandleFunc("PUT /v1/accounts/{id}", s.admin(s.putAccount))
	mux.HandleFunc("GET /v1/accounts/{id}/entries", s.admin(s.getEntries))
	mux.HandleFunc("POST /v1/accounts/{id}/grants", s.admin(s.postGrant))
	mux.HandleFunc("POST /v1/accounts/{id}/adjustments", s.admin(s.postAdjustment))
	mux.HandleFunc("POST /v1/accounts/{id}/purchases", s.admin(s.postPurchase))
	mux.HandleFunc("GET /v1/customer/accounts/{id}", s.customer(s.getCustomerAccount))
	mux.HandleFunc("GET /v1/customer/accounts/{id}/requests", s.customer(s.getCustomerRequests))
	mux.HandleFunc("GET /v1/customer/accounts/{id}/usage", s.customer(s.getCustomerUsage))
	mux.HandleFunc("PUT /v1/accounts/{id}/subscription", s.admin(s.putSubscription))
	mux.HandleFunc("DELETE /v1/accounts/{id}/subscription", s.admin(s.deleteSubscription))
	mux.HandleFunc("PUT /v1/accounts/{id}/budgets/{project}", s.admin(s.putBudget))
	mux.HandleFunc("DELETE /v1/accounts/{id}/budgets/{project}", s.admin(s.deleteBudget))
	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !r.Ready() {
			httpx.WriteError(w, httpx.Errorf(http.StatusServiceUnavailable, httpx.CodeUnavailable, "state not restored yet"))
			return
		}
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	return httpx.Recover(jsonErrors(mux), func(p any) { cfg.Logger.Error("ledger api: panic", "panic", p) })
}

// jsonErrors turns the mux's plain-text 404 and 405 answers into the JSON error shape.
func jsonErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path.Clean(r.URL.Path) {
			// A path with dot segments ("/v1/accounts/./subscription"): the mux would answer
			// a plain 307 to the cleaned path, another route ("PUT /v1/accounts/subscription").
			// No id is "." or "..", so no route matches it.
			httpx.NotFound(w, r)
			return
		}
		_, pattern := mux.Handler(r)
		if pattern == "" {
			// Distinguish a wrong method on a known path (405 with the Allow header RFC 9110
			// requires) from an unknown path.
			var allow []string
			for _, m := range []string{"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"} {
				probe := r.Clone(r.Context())
				probe.Method = m
				if _, p := mux.Handler(probe); p != "" {
					allow = append(allow, m)
				}
			}
			if len(allow) > 0 {
				w.Header().Set("Allow", strings.Join(allow, ", "))
				httpx.WriteError(w, httpx.Errorf(http.StatusMethodNotAllowed, httpx.CodeMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path))
				return
			}
			httpx.NotFound(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// pathID is the request's {id}, checked against the id grammar (400 validation_failed,
// answered here, when it is not one).
func pathID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if err := events.CheckID("id", id); err != nil {
		httpx.WriteError(w, httpx.Validation(err))
		return "", false
	}
	return id, true
}

func (s *server) admin(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		keyID, err := s.cfg.Admin.Authenticate(r)
		if err != nil {
			// DEBUG, so that a flood of bad tokens cannot flood the logs; never the token.
			s.cfg.Logger.Debug("admin token refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "code", err.Code)
			httpx.WriteError(w, err)
			return
		}
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), adminKeyCtx{}, keyID)), id)
	}
}

// adminKeyCtx carries the authenticated admin key's id to the handlers, which record it in
// the events they publish.
type adminKeyCtx struct{}

func adminKeyID(r *http.Request) string { v, _ := r.Context().Value(adminKeyCtx{}).(string); return v }

func (s *server) getAccount(w http.ResponseWriter, r *http.Request, id string) {
	v, ok := s.r.Account(id)
	if !ok && s.fromPeers(w, r, id) {
		return
	}
	if !ok {
		httpx.WriteError(w, httpx.Errorf(http.StatusNotFound, httpx.CodeNotFound, "account %q not known to this ledger instance", id))
		return
	}
	httpx.WriteJSON(w, http.StatusOK, v)
}

func (s *server) getEntries(w http.ResponseWriter, r *http.Request, id string) {
	q := view.EntriesQuery{Limit: s.cfg.PageMax}
	qs := r.URL.Query()
	var err error
	// A parameter that is present must be valid: "to=" is not "no bound".
	if qs.Has("from") {
		if q.From, err = parseTime(qs.Get("from")); err != nil {
			httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "from: want RFC 3339 time"))
			return
		}
	}
	if qs.Has("to") {
		if q.To, err = parseTime(qs.Get("to")); err != nil {
			httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "to: want RFC 3339 time"))
			return
		}
	}
	if qs.Has("cursor") {
		v := qs.Get("cursor")
		if !cursorRe.MatchString(v) {
			httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "cursor: not a cursor from next_cursor"))
			return
		}
		q.Cursor, _ = strconv.ParseUint(v, 10, 64) // at most 19 digits: fits
	}
	if qs.Has("limit") {
		n, err := strconv.Atoi(qs.Get("limit"))
		if err != nil || n < 1 || n > limitMax {
			httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "limit: want 1..%d", limitMax))
			return
		}
		q.Limit = min(n, s.cfg.PageMax)
	}
	page, ok := s.r.Entries(id, q)
	if !ok && s.fromPeers(w, r, id) {
		return
	}
	if !ok {
		httpx.WriteError(w, httpx.Errorf(http.StatusNotFound, httpx.CodeNotFound, "account %q not known to this ledger instance", id))
		return
	}
	httpx.WriteJSON(w, http.StatusOK, page)
}

// fromPeers answers a read of an account this instance does not know (its partition is
// owned by another instance of the consumer group) with the answer of the first peer that
// knows it, and reports whether it wrote an answer. A peer answering 404 does not know it
// either; when every peer answered 404 (or there are none, or r was itself forwarded) it
// writes nothing and the caller answers 404. When a peer could not be asked (down, timed
// out, refused the token) and none knew the account, the answer is 503: the account may
// well exist on that peer. Writes need no forwarding: any instance publishes to the
// events topic, and the owner folds the event.
func (s *server) fromPeers(w http.ResponseWriter, r *http.Request, id string) bool {
	return s.fromPeersIf(w, r, id, func(code int) bool { return code == http.StatusNotFound })
}

// fromPeersIf is fromPeers where notHere says which peer answers mean "not known there"
// (the customer routes add an org key's 403).
func (s *server) fromPeersIf(w http.ResponseWriter, r *http.Request, id string, notHere func(code int) bool) bool {
	if r.Header.Get(ForwardedHeader) != "" {
		return false
	}
	body, failed := s.peerAnswer(r, r.URL.RequestURI(), id, notHere)
	if body != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
		return true
	}
	if failed > 0 {
		writePeersFailed(w, id, failed)
		return true
	}
	return false
}

// peerAnswer asks each peer in turn for GET uri (forwarded: answered from the peer's own
// state, with r's token) and returns the body of the first 200 (nil when none answered one),
// and how many peers could not be asked or gave an unusable answer. An answer notHere
// accepts means the peer does not know the account either.
func (s *server) peerAnswer(r *http.Request, uri, id string, notHere func(code int) bool) (body []byte, failed int) {
	for _, peer := range s.cfg.Peers {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, peer+uri, nil)
		if err != nil {
			failed++
			continue
		}
		req.Header.Set("Authorization", r.Header.Get("Authorization"))
		req.Header.Set(ForwardedHeader, "1")
		resp, err := s.cfg.PeerClient.Do(req)
		if err != nil {
			s.cfg.Logger.Warn("ledger api: peer did not answer", "peer", peer, "account", id, "err", err)
			failed++
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, peerAnswerBytesMax+1))
		_ = resp.Body.Close()
		switch {
		case err == nil && notHere(resp.StatusCode):
			continue
		case err != nil || len(b) > peerAnswerBytesMax || resp.StatusCode != http.StatusOK:
			s.cfg.Logger.Warn("ledger api: peer answer unusable", "peer", peer, "account", id, "status", resp.StatusCode, "bytes", len(b), "err", err)
			failed++
			continue
		}
		return b, failed
	}
	return nil, failed
}

// writePeersFailed answers 503 for an account this instance does not know while failed of its
// peers, one of which may well know it, could not be asked.
func writePeersFailed(w http.ResponseWriter, id string, failed int) {
	httpx.WriteError(w, httpx.Errorf(http.StatusServiceUnavailable, httpx.CodeUnavailable,
		"account %q is not known to this ledger instance, and %d of its peers could not be asked", id, failed))
}

// cursorRe is the cursor grammar the OpenAPI document states: decimal, no leading zeros.
var cursorRe = regexp.MustCompile(`^(0|[1-9][0-9]{0,18})$`)

// limitMax is the most a page's limit may ask (LEDGER_PAGE_MAX's upper bound); a limit above
// the server's LEDGER_PAGE_MAX gets LEDGER_PAGE_MAX entries.
const limitMax = 100_000

// parseTime reads an RFC 3339 time, whose 'T' and 'Z' may be lower case (RFC 3339 5.6).
func parseTime(v string) (time.Time, error) {
	return time.Parse(time.RFC3339Nano, strings.ToUpper(v))
}

// GrantRequest is POST /v1/accounts/{id}/grants. GrantID is the idempotency key: a grant
// re-sent with the same id is applied once (one is generated when empty). Priority absent =
// events.DefaultGrantPriority (100); an explicit 0 is 0.
type GrantRequest struct {
	GrantID      string     `json:"grant_id"`
	AmountMicros int64      `json:"amount_micros"`
	Source       string     `json:"source"`
	Priority     *int32     `json:"priority"`
	ExpiresAt    *time.Time `json:"expires_at,omitempty"`
}

// AdjustmentRequest is POST /v1/accounts/{id}/adjustments.
type AdjustmentRequest struct {
	AdjustmentID string `json:"adjustment_id"`
	AmountMicros int64  `json:"amount_micros"`
	Reason       string `json:"reason"`
}

// AccountRequest is PUT /v1/accounts/{id}. Tier, priority and suspension are replaced
// together; of the settings (see events.AccountUpdated) an absent one is unchanged.
type AccountRequest struct {
	Tier                     string   `json:"tier"`
	Priority                 string   `json:"priority"`
	Suspended                bool     `json:"suspended"`
	OrganizationID           *string  `json:"organization_id,omitempty"`
	NotifyUsagePermille      *[]int32 `json:"notify_usage_permille,omitempty"`
	NotifyFloorMicros        *int64   `json:"notify_floor_micros,omitempty"`
	AutoTopUpThresholdMicros *int64   `json:"auto_top_up_threshold_micros,omitempty"`
	AutoTopUpAmountMicros    *int64   `json:"auto_top_up_amount_micros,omitempty"`
	// FundingAccountID is the account whose balance funds this one's requests ("" its own;
	// absent: unchanged).
	FundingAccountID *string `json:"funding_account_id,omitempty"`
}

// SubscriptionRequest is PUT /v1/accounts/{id}/subscription: subscribe to a plan of the
// price book, or change plan. AnchorAt (default: now) is the billing anchor of a new
// subscription; a change of plan keeps the existing anchor.
type SubscriptionRequest struct {
	PlanID   string     `json:"plan_id"`
	AnchorAt *time.Time `json:"anchor_at,omitempty"`
}

// Error codes of the subscription routes.
const (
	CodeUnknownPlan = "unknown_plan"
	CodeBadAnchor   = "bad_anchor"
)

// Accepted is the 202 answer of every write.
type Accepted struct {
	EventID string `json:"event_id"`
}

func (s *server) postGrant(w http.ResponseWriter, r *http.Request, id string) {
	var req GrantRequest
	if err := httpx.DecodeJSON(r, s.cfg.BodyBytesMax, &req); err != nil {
		httpx.WriteError(w, err)
		return
	}
	if req.GrantID == "" {
		req.GrantID = uuid.NewString()
	}
	if req.Source == "" {
		req.Source = events.GrantPurchase
	}
	priority := int32(events.DefaultGrantPriority)
	if req.Priority != nil {
		priority = *req.Priority
	}
	// An expiry must be in the future by the ledger's clock (an expired grant would be all
	// breakage at once) and before events.MaxTime, 2200-01-01 (events.Validate, checked in
	// publish: nanoseconds since 1970 in an int64 end in 2262).
	if now := s.cfg.Now(); req.ExpiresAt != nil && !req.ExpiresAt.After(now) {
		httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation,
			"expires_at: %s is not after the ledger's clock (%s): a grant must expire in the future, before %s",
			req.ExpiresAt.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339), events.MaxTime.Format(time.RFC3339)))
		return
	}
	s.publish(w, r, events.CreditsGranted{GrantID: req.GrantID, AccountID: id, AmountMicros: req.AmountMicros,
		Source: req.Source, Priority: priority, ExpiresAt: req.ExpiresAt, AdminKeyID: adminKeyID(r)})
}

func (s *server) postAdjustment(w http.ResponseWriter, r *http.Request, id string) {
	var req AdjustmentRequest
	if err := httpx.DecodeJSON(r, s.cfg.BodyBytesMax, &req); err != nil {
		httpx.WriteError(w, err)
		return
	}
	if req.AdjustmentID == "" {
		req.AdjustmentID = uuid.NewString()
	}
	s.publish(w, r, events.CreditsAdjusted{AdjustmentID: req.AdjustmentID, AccountID: id, AmountMicros: req.AmountMicros, Reason: req.Reason,
		AdminKeyID: adminKeyID(r)})
}

func (s *server) putAccount(w http.ResponseWriter, r *http.Request, id string) {
	var req AccountRequest
	if err := httpx.DecodeJSON(r, s.cfg.BodyBytesMax, &req); err != nil {
		httpx.WriteError(w, err)
		return
	}
	if _, ok := s.cfg.Book.Tiers[req.Tier]; !ok && req.Tier != "" {
		httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "tier: %q is not a tier of price book %s", req.Tier, s.cfg.Book.Version))
		return
	}
	if req.NotifyUsagePermille != nil {
		// A set of thresholds: kept sorted (the event wants them strictly increasing; a
		// repeated value is still refused there).
		l := slices.Clone(*req.NotifyUsagePermille)
		slices.Sort(l)
		req.NotifyUsagePermille = &l
	}
	if req.FundingAccountID != nil && *req.FundingAccountID == id {
		httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, CodeSelfFunding,
			"funding_account_id: %q is the account itself; give \"\" for its own balance", id))
		return
	}
	s.publish(w, r, events.AccountUpdated{AccountID: id, Tier: req.Tier, Priority: req.Priority, Suspended: req.Suspended,
		AdminKeyID: adminKeyID(r), OrganizationID: req.OrganizationID, NotifyUsagePermille: req.NotifyUsagePermille,
		NotifyFloorMicros: req.NotifyFloorMicros, AutoTopUpThresholdMicros: req.AutoTopUpThresholdMicros,
		AutoTopUpAmountMicros: req.AutoTopUpAmountMicros, FundingAccountID: req.FundingAccountID})
}

func (s *server) putSubscription(w http.ResponseWriter, r *http.Request, id string) {
	var req SubscriptionRequest
	if err := httpx.DecodeJSON(r, s.cfg.BodyBytesMax, &req); err != nil {
		httpx.WriteError(w, err)
		return
	}
	if req.PlanID == "" {
		httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "plan_id: required (DELETE the subscription to cancel it)"))
		return
	}
	if _, ok := s.cfg.Book.Plan(req.PlanID); !ok {
		httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, CodeUnknownPlan, "plan_id: %q is not a plan of price book %s", req.PlanID, s.cfg.Book.Version))
		return
	}
	now := s.cfg.Now().UTC()
	anchor := now
	if req.AnchorAt != nil {
		anchor = req.AnchorAt.UTC()
		// The anchor sets the billing day and time of day; the current period is the one of
		// its monthly cycle that contains the ledger's clock. It must be within the event time
		// bounds (events.MinTime, events.MaxTime) and not in the future.
		if err := events.CheckTime("anchor_at", anchor); err != nil || anchor.After(now) {
			httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, CodeBadAnchor,
				"anchor_at: %s must be at or after %s and not after the ledger's clock (%s)", anchor.Format(time.RFC3339Nano),
				events.MinTime.Format(time.RFC3339), now.Format(time.RFC3339)))
			return
		}
	}
	s.publish(w, r, events.SubscriptionChanged{AccountID: id, PlanID: req.PlanID, AnchorAt: anchor, AdminKeyID: adminKeyID(r)})
}

func (s *server) deleteSubscription(w http.ResponseWriter, r *http.Request, id string) {
	s.publish(w, r, events.SubscriptionChanged{AccountID: id, AnchorAt: s.cfg.Now().UTC(), AdminKeyID: adminKeyID(r)})
}

// publish validates d, publishes it as a new event (acks=all) and answers 202 with its id.
func (s *server) publish(w http.ResponseWriter, r *http.Request, d events.Data) {
	s.publishAs(w, r, "", d, "retry with the same id")
}

// publishAs is publish with the event id eventID ("" = a new random one: events.New) and the
// advice a 503 gives (retry).
func (s *server) publishAs(w http.ResponseWriter, r *http.Request, eventID string, d events.Data, retry string) {
	if err := d.Validate(); err != nil {
		httpx.WriteError(w, httpx.Validation(err))
		return
	}
	var ev events.Event
	var err error
	if eventID == "" {
		ev, err = events.New(Source, s.cfg.Now(), d)
	} else {
		ev, err = events.NewWithID(eventID, Source, s.cfg.Now(), d)
	}
	if err != nil {
		httpx.WriteError(w, httpx.Validation(err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.PublishTimeout)
	defer cancel()
	if err := s.pub.Publish(ctx, ev); err != nil {
		s.cfg.Logger.Error("ledger api: publish", "type", ev.Type, "account", ev.Subject, "err", err)
		httpx.WriteError(w, httpx.Errorf(http.StatusServiceUnavailable, httpx.CodeUnavailable, "could not publish the event durably; %s", retry))
		return
	}
	httpx.WriteJSON(w, http.StatusAccepted, Accepted{EventID: ev.ID})
}

// String makes Route print as "GET /path".
func (r Route) String() string { return fmt.Sprintf("%s %s", r.Method, r.Path) }
