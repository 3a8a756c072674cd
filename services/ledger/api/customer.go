package api

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
)

// Customer keys. A customer key reads one account, or the accounts of one organisation, and
// nothing else: the three GET /v1/customer/accounts/{id}... routes, never a write, never the
// limit factors or the log position. Its token starts with CustomerKeyPrefix ("tcu_"), so it
// is refused on the admin routes (whose keyring wants "ta_"), and an admin token or an edge
// key is refused on the customer routes (their keyring wants "tcu_"): each role has its own
// keyring, and a failure on either counts against the client address in the same
// throttle (LEDGER_AUTH_FAILURES_*).
//
// The keys file (LEDGER_CUSTOMER_KEYS_FILE) has one entry per line, blank lines and lines
// starting with # ignored:
//
//	<id>:hmac:<hex>:account=<account id>
//	<id>:hmac:<hex>:org=<organisation id>
//
// <hex> is the HMAC-SHA256 of the token under LEDGER_KEY_HASH_SECRET, as for admin keys;
// `tallyctl customer-key` writes such a line. Key ids are unique within the file.

// CustomerKeyPrefix starts every customer token.
const CustomerKeyPrefix = "tcu_"

// CustomerKeysFileBytesMax bounds the customer keys file (1 MiB, about 8,000 keys).
const CustomerKeysFileBytesMax = 1 << 20

// Scope is what a customer key may read: exactly one of AccountID and OrganizationID is set.
type Scope struct {
	AccountID      string
	OrganizationID string
}

// String is the scope as written in the keys file.
func (s Scope) String() string {
	if s.AccountID != "" {
		return "account=" + s.AccountID
	}
	return "org=" + s.OrganizationID
}

// ParseScope reads "account=<id>" or "org=<id>".
func ParseScope(s string) (Scope, error) {
	kind, id, ok := strings.Cut(s, "=")
	var sc Scope
	switch {
	case ok && kind == "account":
		sc.AccountID = id
	case ok && kind == "org":
		sc.OrganizationID = id
	default:
		return Scope{}, fmt.Errorf("scope %q: want account=<id> or org=<id>", s)
	}
	if err := events.CheckID(kind, id); err != nil {
		return Scope{}, fmt.Errorf("scope: %w", err)
	}
	return sc, nil
}

// allows reports whether the scope may read account v.
func (s Scope) allows(v view.Account) bool {
	if s.AccountID != "" {
		return v.AccountID == s.AccountID
	}
	return v.OrganizationID != "" && v.OrganizationID == s.OrganizationID
}

// CustomerKeys authenticates customer tokens and knows each key's scope. The zero value
// (or nil) refuses every token.
type CustomerKeys struct {
	ring   *httpx.Keyring
	scopes map[string]Scope // by key id
}

// ParseCustomerKeys parses the keys file's text. secret is LEDGER_KEY_HASH_SECRET (required
// when there is any entry); th, when set, counts failed authentications.
func ParseCustomerKeys(text string, secret []byte, th *httpx.AuthThrottle) (*CustomerKeys, error) {
	k := &CustomerKeys{scopes: map[string]Scope{}}
	var entries []string
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ':')
		entry, rawScope := line[:max(i, 0)], line[i+1:]
		id, rest, _ := strings.Cut(entry, ":")
		if i < 0 || !strings.HasPrefix(rest, "hmac:") || strings.Contains(entry, ",") {
			return nil, fmt.Errorf("line %d: want <id>:hmac:<hex>:account=<id> or <id>:hmac:<hex>:org=<id>", n+1)
		}
		if err := events.CheckID("key id", id); err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		sc, err := ParseScope(rawScope)
		if err != nil {
			return nil, fmt.Errorf("line %d: key %q: %w", n+1, id, err)
		}
		if _, dup := k.scopes[id]; dup {
			return nil, fmt.Errorf("line %d: key id %q appears twice", n+1, id)
		}
		k.scopes[id] = sc
		entries = append(entries, entry)
	}
	if len(entries) > 0 && len(secret) == 0 {
		return nil, fmt.Errorf("customer keys are hmac entries: LEDGER_KEY_HASH_SECRET is required")
	}
	ring, err := httpx.ParseKeyringWith(strings.Join(entries, ","), httpx.KeyringOptions{HashSecret: secret, TokenPrefix: CustomerKeyPrefix, Throttle: th})
	if err != nil {
		return nil, err
	}
	k.ring = ring
	return k, nil
}

// LoadCustomerKeys reads and parses the keys file at path (at most CustomerKeysFileBytesMax).
func LoadCustomerKeys(path string, secret []byte, th *httpx.AuthThrottle) (*CustomerKeys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, CustomerKeysFileBytesMax+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > CustomerKeysFileBytesMax {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, CustomerKeysFileBytesMax)
	}
	k, err := ParseCustomerKeys(string(b), secret, th)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Len is the number of keys.
func (k *CustomerKeys) Len() int {
	if k == nil {
		return 0
	}
	return len(k.scopes)
}

// Authenticate returns the scope of the request's customer token (see httpx.Keyring: 429,
// 401, 403).
//
// A bearer token without the customer prefix (an admin token, an edge key) is refused at once
// and is not counted as a failure: no customer entry can accept it, so counting it would
// protect nothing and would lock an admin tool that called a customer route out of the admin
// API, which shares the throttle.
func (k *CustomerKeys) Authenticate(r *http.Request) (Scope, *httpx.Error) {
	if k == nil || k.ring == nil {
		k = emptyCustomerKeys
	}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && tok != "" && !strings.HasPrefix(tok, CustomerKeyPrefix) {
		return Scope{}, httpx.Errorf(http.StatusForbidden, httpx.CodeForbidden, "not a customer key: the customer routes take %s tokens only", CustomerKeyPrefix)
	}
	id, err := k.ring.Authenticate(r)
	if err != nil {
		return Scope{}, err
	}
	return k.scopes[id], nil
}

var emptyCustomerKeys, _ = ParseCustomerKeys("", nil, nil)

// CustomerAccount is GET /v1/customer/accounts/{id}: the balances, grants and allowance of
// view.Account, and its plan and period when it has them; not the limit factors, holds
// count or log position, which are the operator's.
type CustomerAccount struct {
	AccountID       string             `json:"account_id"`
	OrganizationID  string             `json:"organization_id,omitempty"`
	Tier            string             `json:"tier"`
	Suspended       bool               `json:"suspended"`
	AvailableMicros int64              `json:"available_micros"`
	HeldMicros      int64              `json:"held_micros"`
	OverageMicros   int64              `json:"overage_micros"`
	Grants          []view.Grant       `json:"grants"`
	Allowance       []view.Allowance   `json:"allowance"`
	Subscription    *view.Subscription `json:"subscription,omitempty"`
	Period          *view.Period       `json:"period,omitempty"`
	// FundingAccountID and Projects are view.Account's: the account funding this one, and
	// the budgets of the projects this one funds.
	FundingAccountID string               `json:"funding_account_id,omitempty"`
	Projects         []view.ProjectBudget `json:"projects,omitempty"`
	// AsOf is the ledger's log time for the account's partition: the view includes every
	// event up to it.
	AsOf time.Time `json:"as_of"`
}

// CustomerUsage is GET /v1/customer/accounts/{id}/usage: the current period's use by
// endpoint (null while the ledger keeps no period for the account) and the allowance windows.
type CustomerUsage struct {
	AccountID string           `json:"account_id"`
	Period    *view.Period     `json:"period"`
	Allowance []view.Allowance `json:"allowance"`
	AsOf      time.Time        `json:"as_of"`
}

// CustomerRequest is one request in GET /v1/customer/accounts/{id}/requests: the sums of its
// journal lines that the ledger still caches. A request is its project's (ProjectID) or the
// account's own: two projects the account funds may use the same request id.
type CustomerRequest struct {
	RequestID string `json:"request_id"`
	// ProjectID is the project (a funded account) whose request the account paid for;
	// absent for the account's own request.
	ProjectID string    `json:"project_id,omitempty"`
	FirstAt   time.Time `json:"first_at"`
	LastAt    time.Time `json:"last_at"`
	// Kinds are the transaction kinds, in journal order (hold, charge, expiry, ...).
	Kinds []string `json:"kinds"`
	// HeldMicros is what is still held for it (0 once settled or expired).
	HeldMicros int64 `json:"held_micros"`
	// AvailableMicros is its net effect on the available balance (negative: spent).
	AvailableMicros int64 `json:"available_micros"`
	// ChargedMicros is what it was charged in credits (the cost less what the allowance paid).
	ChargedMicros int64 `json:"charged_micros"`
	// OverageMicros is what of the charge could not be paid.
	OverageMicros int64 `json:"overage_micros"`
}

// CustomerRequests is GET /v1/customer/accounts/{id}/requests, newest first.
type CustomerRequests struct {
	AccountID string            `json:"account_id"`
	Requests  []CustomerRequest `json:"requests"`
	// More is true when older requests are cached beyond this page.
	More bool `json:"more"`
}

// requestsScanLinesMax bounds the cached journal lines one requests page reads (the cache
// holds at most LEDGER_JOURNAL_PER_ACCOUNT, itself at most 100,000, per account).
const requestsScanLinesMax = 100_000

// customer authenticates a customer token, checks the path id and the key's scope, and
// calls h with the account's view. An account key reading another account, and an org key
// reading an account that is not known to be in its organisation (unknown accounts
// included, so an org key cannot probe which ids exist), get 403 forbidden.
func (s *server) customer(h func(http.ResponseWriter, *http.Request, view.Account)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var keys *CustomerKeys
		if s.cfg.Customers != nil {
			keys = s.cfg.Customers()
		}
		sc, err := keys.Authenticate(r)
		if err != nil {
			s.cfg.Logger.Debug("customer token refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "code", err.Code)
			httpx.WriteError(w, err)
			return
		}
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		if sc.AccountID != "" && id != sc.AccountID {
			httpx.WriteError(w, outsideScope(id))
			return
		}
		v, ok := s.r.Account(id)
		if !ok {
			// An org key's scope is decided by the instance that owns the account: a peer's
			// 403 means it is not in the organisation there, or the peer does not know it.
			notHere := func(code int) bool {
				return code == http.StatusNotFound || (sc.OrganizationID != "" && code == http.StatusForbidden)
			}
			if s.fromPeersIf(w, r, id, notHere) {
				return
			}
			if sc.OrganizationID != "" {
				httpx.WriteError(w, outsideScope(id))
			} else {
				httpx.WriteError(w, httpx.Errorf(http.StatusNotFound, httpx.CodeNotFound, "account %q not known to this ledger", id))
			}
			return
		}
		if !sc.allows(v) {
			httpx.WriteError(w, outsideScope(id))
			return
		}
		h(w, r, v)
	}
}

func outsideScope(id string) *httpx.Error {
	return httpx.Errorf(http.StatusForbidden, httpx.CodeForbidden, "this key may not read account %q", id)
}

func (s *server) getCustomerAccount(w http.ResponseWriter, _ *http.Request, v view.Account) {
	httpx.WriteJSON(w, http.StatusOK, CustomerAccount{AccountID: v.AccountID, OrganizationID: v.OrganizationID, Tier: v.Tier,
		Suspended: v.Suspended, AvailableMicros: v.AvailableMicros, HeldMicros: v.HeldMicros, OverageMicros: v.OverageMicros,
		Grants: nonNil(v.Grants), Allowance: nonNil(v.Allowance), Subscription: v.Subscription, Period: v.Period,
		FundingAccountID: v.FundingAccountID, Projects: v.Projects, AsOf: v.Position.Watermark})
}

func (s *server) getCustomerUsage(w http.ResponseWriter, _ *http.Request, v view.Account) {
	httpx.WriteJSON(w, http.StatusOK, CustomerUsage{AccountID: v.AccountID, Period: v.Period, Allowance: nonNil(v.Allowance),
		AsOf: v.Position.Watermark})
}

func (s *server) getCustomerRequests(w http.ResponseWriter, r *http.Request, v view.Account) {
	limit := s.cfg.PageMax
	if qs := r.URL.Query(); qs.Has("limit") {
		n, err := strconv.Atoi(qs.Get("limit"))
		if err != nil || n < 1 || n > limitMax {
			httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "limit: want 1..%d", limitMax))
			return
		}
		limit = min(n, s.cfg.PageMax)
	}
	var lines []view.Entry
	q := view.EntriesQuery{Limit: max(1, s.cfg.PageMax)}
	for len(lines) < requestsScanLinesMax {
		page, ok := s.r.Entries(v.AccountID, q)
		if !ok {
			break // the account moved to another instance since the view was read: what was read stands
		}
		lines = append(lines, page.Entries...)
		c, err := strconv.ParseUint(page.NextCursor, 10, 64)
		if page.NextCursor == "" || err != nil || c <= q.Cursor {
			break
		}
		q.Cursor = c
	}
	httpx.WriteJSON(w, http.StatusOK, groupRequests(v.AccountID, lines, limit))
}

// groupRequests sums lines (in journal order) by request (project and request id), newest
// (latest line) first, and keeps the first limit.
func groupRequests(account string, lines []view.Entry, limit int) CustomerRequests {
	type key struct{ project, request string }
	byID := map[key]int{}
	var reqs []CustomerRequest
	last := []int{}
	for i, l := range lines {
		if l.RequestID == "" {
			continue
		}
		k := key{l.ProjectID, l.RequestID}
		j, ok := byID[k]
		if !ok {
			j = len(reqs)
			byID[k] = j
			reqs = append(reqs, CustomerRequest{RequestID: l.RequestID, ProjectID: l.ProjectID, FirstAt: l.EffectiveAt, LastAt: l.EffectiveAt,
				Kinds: []string{}})
			last = append(last, 0)
		}
		q := &reqs[j]
		last[j] = i
		if l.EffectiveAt.Before(q.FirstAt) {
			q.FirstAt = l.EffectiveAt
		}
		if l.EffectiveAt.After(q.LastAt) {
			q.LastAt = l.EffectiveAt
		}
		if n := len(q.Kinds); n == 0 || q.Kinds[n-1] != l.Kind {
			q.Kinds = append(q.Kinds, l.Kind)
		}
		switch l.LedgerAccount {
		case events.LedgerHeld:
			q.HeldMicros += l.AmountMicros
		case events.LedgerAvailable:
			q.AvailableMicros += l.AmountMicros
		case events.LedgerRevenue:
			q.ChargedMicros += l.AmountMicros
		case events.LedgerOverageReceivable:
			q.OverageMicros -= l.AmountMicros
		}
	}
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return last[order[a]] > last[order[b]] })
	out := CustomerRequests{AccountID: account, Requests: make([]CustomerRequest, 0, min(limit, len(reqs)))}
	for _, j := range order {
		if len(out.Requests) == limit {
			out.More = true
			break
		}
		out.Requests = append(out.Requests, reqs[j])
	}
	return out
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
