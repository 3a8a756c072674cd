package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/pricebook"
)

// fakeReader serves fixed accounts and journal lines; pageMax > 0 cuts Entries into pages of
// at most that many lines, so that readers must follow next_cursor.
type fakeReader struct {
	accounts map[string]view.Account
	lines    map[string][]view.Entry
	pageMax  int
}

func (f *fakeReader) Account(id string) (view.Account, bool) {
	v, ok := f.accounts[id]
	return v, ok
}

func (f *fakeReader) Entries(id string, q view.EntriesQuery) (view.Entries, bool) {
	if _, ok := f.accounts[id]; !ok {
		return view.Entries{}, false
	}
	out := view.Entries{AccountID: id, Entries: []view.Entry{}}
	limit := q.Limit
	if f.pageMax > 0 {
		limit = min(limit, f.pageMax)
	}
	for _, l := range f.lines[id] {
		if l.Seq <= q.Cursor {
			continue
		}
		if len(out.Entries) == limit {
			out.NextCursor = strconv.FormatUint(out.Entries[len(out.Entries)-1].Seq, 10)
			break
		}
		out.Entries = append(out.Entries, l)
	}
	return out, true
}

func (f *fakeReader) Ready() bool { return true }

var custSecret = []byte("0123456789abcdef0123456789abcdef")

const (
	custAdmin   = "ta_admin-token"
	custAcct    = "tcu_account-key"
	custOrg     = "tcu_org-key"
	custEdgeKey = "tk_edge-key"
)

// customerFixture is a handler with an admin keyring, customer keys (one scoped to account
// acme, one to organisation org1) and accounts: acme (no organisation), m1 and m2 (org1),
// x1 (org2). The admin token and the edge key are configured as customer keys too, and the
// account key as an admin key: only the role prefix keeps them out.
func customerFixture(t *testing.T) (http.Handler, *recordingPublisher, *fakeReader) {
	t.Helper()
	th, _ := httpx.NewAuthThrottle(1000, time.Minute, 100, nil)
	admin, err := httpx.ParseKeyringWith("ops:hmac:"+httpx.HMACKey(custSecret, custAdmin)+",sneaky:hmac:"+httpx.HMACKey(custSecret, custAcct),
		httpx.KeyringOptions{HashSecret: custSecret, TokenPrefix: "ta_", Throttle: th})
	if err != nil {
		t.Fatal(err)
	}
	file := strings.Join([]string{
		"# customer keys",
		"acme-key:hmac:" + httpx.HMACKey(custSecret, custAcct) + ":account=acme",
		"",
		"org-key:hmac:" + httpx.HMACKey(custSecret, custOrg) + ":org=org1",
		"admin-as-customer:hmac:" + httpx.HMACKey(custSecret, custAdmin) + ":account=acme",
		"edge-as-customer:hmac:" + httpx.HMACKey(custSecret, custEdgeKey) + ":account=acme",
	}, "\n")
	ck, err := api.ParseCustomerKeys(file, custSecret, th)
	if err != nil {
		t.Fatal(err)
	}
	if ck.Len() != 4 {
		t.Fatalf("keys: %d, want 4", ck.Len())
	}
	exp := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	acct := func(id, org string) view.Account {
		return view.Account{AccountID: id, OrganizationID: org, Tier: "free", AvailableMicros: 7_000_000, HeldMicros: 1_000_000,
			Grants:    []view.Grant{{GrantID: "g1", AmountMicros: 8_000_000, RemainingMicros: 7_000_000, Priority: 100, ExpiresAt: &exp}},
			Allowance: []view.Allowance{{Window: "5h", LimitMicros: 10, UsedMicros: 3, RemainingMicros: 7}},
			Limits:    view.Limits{HistoryFactorPermille: 1000, Endpoints: map[string]map[string]int32{"sora.video": {"batch": 500}}},
			Position:  view.Position{Partition: 3, Offset: 99, Watermark: exp.Add(-time.Hour)}}
	}
	rd := &fakeReader{accounts: map[string]view.Account{"acme": acct("acme", ""), "m1": acct("m1", "org1"), "m2": acct("m2", "org1"),
		"x1": acct("x1", "org2")}, lines: map[string][]view.Entry{}}
	pub := &recordingPublisher{}
	h := api.Handler(api.Config{Admin: admin, Customers: func() *api.CustomerKeys { return ck }, Book: pricebook.Default(),
		BodyBytesMax: 4096, PageMax: 100, PublishTimeout: time.Second, Now: func() time.Time { return exp.Add(-24 * time.Hour) }}, rd, pub)
	return h, pub, rd
}

func do(h http.Handler, method, path, token, body string) *httptest.ResponseRecorder {
	var req *http.Request
	if body != "" {
		req = httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
	} else {
		req = httptest.NewRequest(method, path, nil)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func errCode(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error.Code == "" {
		t.Fatalf("%d: not a JSON error: %q", w.Code, w.Body)
	}
	return e.Error.Code
}

// TestCustomerKeyScope: a customer key reads its account (or its organisation's accounts)
// through the customer routes and nothing else; admin tokens and edge keys are refused there.
func TestCustomerKeyScope(t *testing.T) {
	h, pub, _ := customerFixture(t)
	grant := `{"amount_micros":5}`
	purchase := `{"purchase_id":"p1","payment_ref":"pi_1","amount_micros":5}`
	cases := []struct {
		name, method, path, token, body string
		want                            int
		code                            string
	}{
		{"account key, own account", "GET", "/v1/customer/accounts/acme", custAcct, "", 200, ""},
		{"account key, own requests", "GET", "/v1/customer/accounts/acme/requests", custAcct, "", 200, ""},
		{"account key, own usage", "GET", "/v1/customer/accounts/acme/usage", custAcct, "", 200, ""},
		{"account key, another account", "GET", "/v1/customer/accounts/m1", custAcct, "", 403, httpx.CodeForbidden},
		{"account key, another account's requests", "GET", "/v1/customer/accounts/m1/requests", custAcct, "", 403, httpx.CodeForbidden},
		{"account key, another account's usage", "GET", "/v1/customer/accounts/x1/usage", custAcct, "", 403, httpx.CodeForbidden},
		{"account key, unknown account", "GET", "/v1/customer/accounts/nobody", custAcct, "", 403, httpx.CodeForbidden},
		{"org key, member", "GET", "/v1/customer/accounts/m1", custOrg, "", 200, ""},
		{"org key, other member", "GET", "/v1/customer/accounts/m2/usage", custOrg, "", 200, ""},
		{"org key, member requests", "GET", "/v1/customer/accounts/m2/requests", custOrg, "", 200, ""},
		{"org key, account of no organisation", "GET", "/v1/customer/accounts/acme", custOrg, "", 403, httpx.CodeForbidden},
		{"org key, another organisation", "GET", "/v1/customer/accounts/x1", custOrg, "", 403, httpx.CodeForbidden},
		{"org key, another organisation's requests", "GET", "/v1/customer/accounts/x1/requests", custOrg, "", 403, httpx.CodeForbidden},
		{"org key, unknown account (no probing)", "GET", "/v1/customer/accounts/nobody", custOrg, "", 403, httpx.CodeForbidden},
		{"customer key, admin read", "GET", "/v1/accounts/acme", custAcct, "", 403, httpx.CodeForbidden},
		{"customer key, admin entries", "GET", "/v1/accounts/acme/entries", custAcct, "", 403, httpx.CodeForbidden},
		{"customer key, grant", "POST", "/v1/accounts/acme/grants", custAcct, grant, 403, httpx.CodeForbidden},
		{"customer key, purchase", "POST", "/v1/accounts/acme/purchases", custAcct, purchase, 403, httpx.CodeForbidden},
		{"customer key, adjustment", "POST", "/v1/accounts/acme/adjustments", custAcct, `{"amount_micros":5,"reason":"r"}`, 403, httpx.CodeForbidden},
		{"customer key, account update", "PUT", "/v1/accounts/acme", custOrg, `{"tier":"free"}`, 403, httpx.CodeForbidden},
		{"customer key, write on a customer path", "POST", "/v1/customer/accounts/acme", custAcct, grant, 405, httpx.CodeMethodNotAllowed},
		{"admin token, customer route", "GET", "/v1/customer/accounts/acme", custAdmin, "", 403, httpx.CodeForbidden},
		{"edge key, customer route", "GET", "/v1/customer/accounts/acme/usage", custEdgeKey, "", 403, httpx.CodeForbidden},
		{"no token, customer route", "GET", "/v1/customer/accounts/acme", "", "", 401, httpx.CodeUnauthenticated},
		{"bad id", "GET", "/v1/customer/accounts/.hidden", custAcct, "", 400, httpx.CodeValidation},
		{"admin token, admin read", "GET", "/v1/accounts/acme", custAdmin, "", 200, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := do(h, c.method, c.path, c.token, c.body)
			if w.Code != c.want {
				t.Fatalf("%s %s: %d %s, want %d", c.method, c.path, w.Code, w.Body, c.want)
			}
			if c.code != "" && errCode(t, w) != c.code {
				t.Fatalf("code %q, want %q: %s", errCode(t, w), c.code, w.Body)
			}
			if evs := pub.take(); len(evs) != 0 {
				t.Fatalf("published %d events", len(evs))
			}
		})
	}
}

// TestCustomerAccountShowsNoInternals: the customer view has the balances, grants with
// expiries and allowance, and not the limit factors, holds count or log position.
func TestCustomerAccountShowsNoInternals(t *testing.T) {
	h, _, rd := customerFixture(t)
	w := do(h, "GET", "/v1/customer/accounts/acme", custAcct, "")
	var m map[string]json.RawMessage
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil || w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	for _, k := range []string{"limits", "position", "open_holds"} {
		if _, ok := m[k]; ok {
			t.Errorf("customer view has %q: %s", k, w.Body)
		}
	}
	var a api.CustomerAccount
	_ = json.Unmarshal(w.Body.Bytes(), &a)
	want := rd.accounts["acme"]
	if a.AvailableMicros != want.AvailableMicros || a.HeldMicros != want.HeldMicros || len(a.Grants) != 1 ||
		a.Grants[0].ExpiresAt == nil || !a.Grants[0].ExpiresAt.Equal(*want.Grants[0].ExpiresAt) || len(a.Allowance) != 1 ||
		!a.AsOf.Equal(want.Position.Watermark) || a.Subscription != nil || a.Period != nil {
		t.Fatalf("customer view %+v from %+v", a, want)
	}
	// With the plan fields of P's branch present, they are shown.
	p := &view.Period{Start: want.Position.Watermark, End: want.Position.Watermark.Add(time.Hour), AllocationMicros: 9, UsedMicros: 4,
		ByEndpoint: map[string]view.EndpointUsage{"sora.video": {Requests: 2, ChargedMicros: 4}}}
	want.Subscription, want.Period = &view.Subscription{PlanID: "pro"}, p
	rd.accounts["acme"] = want
	w = do(h, "GET", "/v1/customer/accounts/acme", custAcct, "")
	a = api.CustomerAccount{}
	_ = json.Unmarshal(w.Body.Bytes(), &a)
	if a.Subscription == nil || a.Subscription.PlanID != "pro" || a.Period == nil || a.Period.ByEndpoint["sora.video"].Requests != 2 {
		t.Fatalf("plan fields not shown: %s", w.Body)
	}
}

// TestCustomerUsageShape: period is null while the ledger keeps none for the account, and
// the period's use by endpoint once it does.
func TestCustomerUsageShape(t *testing.T) {
	h, _, rd := customerFixture(t)
	w := do(h, "GET", "/v1/customer/accounts/acme/usage", custAcct, "")
	var m map[string]json.RawMessage
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil || w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if string(m["period"]) != "null" || string(m["account_id"]) != `"acme"` || !strings.HasPrefix(string(m["allowance"]), "[{") {
		t.Fatalf("usage without a period: %s", w.Body)
	}
	v := rd.accounts["acme"]
	v.Period = &view.Period{Start: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		AllocationMicros: 100, UsedMicros: 30, ByEndpoint: map[string]view.EndpointUsage{"sora.video": {Requests: 3, ChargedMicros: 30}}}
	rd.accounts["acme"] = v
	w = do(h, "GET", "/v1/customer/accounts/acme/usage", custAcct, "")
	var u api.CustomerUsage
	if err := json.Unmarshal(w.Body.Bytes(), &u); err != nil || u.Period == nil || u.Period.UsedMicros != 30 ||
		u.Period.ByEndpoint["sora.video"] != (view.EndpointUsage{Requests: 3, ChargedMicros: 30}) {
		t.Fatalf("usage with a period: %s", w.Body)
	}
}

// TestCustomerRequestsGroupsJournal: the requests page sums the cached journal lines by
// request id, newest first, follows the journal's pages, and is bounded by limit.
func TestCustomerRequestsGroupsJournal(t *testing.T) {
	h, _, rd := customerFixture(t)
	rd.pageMax = 2 // the handler must follow next_cursor
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	var seq uint64
	line := func(req, acct, kind string, amt int64, dt time.Duration) view.Entry {
		seq++
		return view.Entry{Seq: seq, LedgerEntry: events.LedgerEntry{EntryID: fmt.Sprint("e", seq), TransactionID: "t", AccountID: "acme",
			LedgerAccount: acct, AmountMicros: amt, Kind: kind, CauseEventID: "c", RequestID: req, EffectiveAt: at.Add(dt)}}
	}
	rd.lines["acme"] = []view.Entry{
		line("", events.LedgerAvailable, "grant", 100, 0), line("", events.LedgerGrantsIssued, "grant", -100, 0),
		line("r1", events.LedgerAvailable, "hold", -40, time.Second), line("r1", events.LedgerHeld, "hold", 40, time.Second),
		line("r2", events.LedgerAvailable, "hold", -10, 2*time.Second), line("r2", events.LedgerHeld, "hold", 10, 2*time.Second),
		// r1 settles: cost 50 against a 40 hold, 5 paid from available, 5 overage.
		line("r1", events.LedgerHeld, "charge", -40, 3*time.Second), line("r1", events.LedgerAvailable, "charge", -5, 3*time.Second),
		line("r1", events.LedgerOverageReceivable, "charge", -5, 3*time.Second), line("r1", events.LedgerRevenue, "charge", 50, 3*time.Second),
	}
	w := do(h, "GET", "/v1/customer/accounts/acme/requests", custAcct, "")
	var page api.CustomerRequests
	if err := json.Unmarshal(w.Body.Bytes(), &page); err != nil || w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	want := []api.CustomerRequest{
		{RequestID: "r1", FirstAt: at.Add(time.Second), LastAt: at.Add(3 * time.Second), Kinds: []string{"hold", "charge"},
			HeldMicros: 0, AvailableMicros: -45, ChargedMicros: 50, OverageMicros: 5},
		{RequestID: "r2", FirstAt: at.Add(2 * time.Second), LastAt: at.Add(2 * time.Second), Kinds: []string{"hold"},
			HeldMicros: 10, AvailableMicros: -10},
	}
	if got, _ := json.Marshal(page.Requests); page.More || string(got) != string(must(json.Marshal(want))) {
		t.Fatalf("requests %s more=%v\nwant %s", got, page.More, must(json.Marshal(want)))
	}
	w = do(h, "GET", "/v1/customer/accounts/acme/requests?limit=1", custAcct, "")
	page = api.CustomerRequests{}
	_ = json.Unmarshal(w.Body.Bytes(), &page)
	if len(page.Requests) != 1 || page.Requests[0].RequestID != "r1" || !page.More {
		t.Fatalf("limit=1: %s", w.Body)
	}
	for _, q := range []string{"limit=0", "limit=-1", "limit=x", "limit=100001"} {
		if w := do(h, "GET", "/v1/customer/accounts/acme/requests?"+q, custAcct, ""); w.Code != 400 || errCode(t, w) != httpx.CodeValidation {
			t.Errorf("%s: %d %s", q, w.Code, w.Body)
		}
	}
}

// TestCustomerRequestsTellProjectsApart: an organization's cached journal holds the lines of
// two projects it funds and of its own request, all with request id r1: the requests page
// lists three requests, each with its own sums, and names the project of a funded one.
func TestCustomerRequestsTellProjectsApart(t *testing.T) {
	h, _, rd := customerFixture(t)
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	var seq uint64
	line := func(project, acct, kind string, amt int64, dt time.Duration) view.Entry {
		seq++
		return view.Entry{Seq: seq, LedgerEntry: events.LedgerEntry{EntryID: fmt.Sprint("e", seq), TransactionID: "t", AccountID: "acme",
			LedgerAccount: acct, AmountMicros: amt, Kind: kind, CauseEventID: "c", RequestID: "r1", ProjectID: project, EffectiveAt: at.Add(dt)}}
	}
	rd.lines["acme"] = []view.Entry{
		line("p1", events.LedgerAvailable, "hold", -40, time.Second), line("p1", events.LedgerHeld, "hold", 40, time.Second),
		line("p2", events.LedgerAvailable, "hold", -10, 2*time.Second), line("p2", events.LedgerHeld, "hold", 10, 2*time.Second),
		line("", events.LedgerAvailable, "hold", -7, 3*time.Second), line("", events.LedgerHeld, "hold", 7, 3*time.Second),
		line("p1", events.LedgerHeld, "charge", -40, 4*time.Second), line("p1", events.LedgerAvailable, "charge", 15, 4*time.Second),
		line("p1", events.LedgerRevenue, "charge", 25, 4*time.Second),
	}
	w := do(h, "GET", "/v1/customer/accounts/acme/requests", custAcct, "")
	var page struct {
		Requests []map[string]any `json:"requests"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &page); err != nil || w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	var got []string
	for _, r := range page.Requests {
		got = append(got, fmt.Sprintf("%v/%v held %v available %v charged %v", r["project_id"], r["request_id"], r["held_micros"], r["available_micros"], r["charged_micros"]))
	}
	want := []string{ // newest (latest line) first
		"p1/r1 held 0 available -25 charged 25",
		"<nil>/r1 held 7 available -7 charged 0",
		"p2/r1 held 10 available -10 charged 0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// TestParseCustomerKeys: the keys file's grammar, and what it refuses.
func TestParseCustomerKeys(t *testing.T) {
	mac := httpx.HMACKey(custSecret, "tcu_x")
	mac2 := httpx.HMACKey(custSecret, "tcu_y")
	ok := "# comment\n\n a:hmac:" + mac + ":account=acct_1 \nb:hmac:" + mac2 + ":org=org/1\n"
	k, err := api.ParseCustomerKeys(ok, custSecret, nil)
	if err != nil || k.Len() != 2 {
		t.Fatalf("%v, %d keys", err, k.Len())
	}
	for _, c := range []struct{ name, text, want string }{
		{"no scope", "a:hmac:" + mac, "want <id>:hmac"},
		{"legacy entry", "a:" + httpx.HashSecret("tcu_x") + ":account=x", "want <id>:hmac"},
		{"unknown scope", "a:hmac:" + mac + ":project=p", "want account=<id> or org=<id>"},
		{"empty scope id", "a:hmac:" + mac + ":org=", "org: required"},
		{"bad scope id", "a:hmac:" + mac + ":account=a b", "account"},
		{"duplicate id", "a:hmac:" + mac + ":org=o\na:hmac:" + mac2 + ":org=o", "appears twice"},
		{"same secret twice", "a:hmac:" + mac + ":org=o\nb:hmac:" + mac + ":org=p", "same secret"},
		{"not hex", "a:hmac:zz:org=o", "want id:hmac"},
		{"comma", "a:hmac:" + mac + ",b:hmac:" + mac2 + ":org=o", "want <id>:hmac"},
	} {
		if _, err := api.ParseCustomerKeys(c.text, custSecret, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := api.ParseCustomerKeys("a:hmac:"+mac+":org=o", nil, nil); err == nil || !strings.Contains(err.Error(), "LEDGER_KEY_HASH_SECRET") {
		t.Errorf("no secret: %v", err)
	}
	// A nil keys set refuses every token.
	var none *api.CustomerKeys
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Authorization", "Bearer tcu_x")
	if _, err := none.Authenticate(req); err == nil || err.Status != 403 {
		t.Fatalf("nil keys: %v", err)
	}
}

// TestPurchaseIdempotency: a purchase publishes one credits.granted with a deterministic id,
// the grant id purchase:<id> and the payment reference; a retry answers the same, and, once
// the grant is folded, a retry with another amount or expiry is 409 idempotency_conflict.
func TestPurchaseIdempotency(t *testing.T) {
	h, pub, rd := customerFixture(t)
	body := `{"purchase_id":"order-1","payment_ref":"pi_3Nabc","amount_micros":5000000,"expires_at":"2027-06-30T00:00:00Z"}`
	w := do(h, "POST", "/v1/accounts/acme/purchases", custAdmin, body)
	if w.Code != 202 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	var acc api.Accepted
	_ = json.Unmarshal(w.Body.Bytes(), &acc)
	evs := pub.take()
	if len(evs) != 1 || evs[0].ID != acc.EventID || acc.EventID != api.PurchaseEventID("acme", "order-1") {
		t.Fatalf("published %+v, answered %s", evs, acc.EventID)
	}
	back, err := events.Decode(must(evs[0].Encode()))
	if err != nil {
		t.Fatal(err)
	}
	g, ok := back.Payload.(events.CreditsGranted)
	exp := time.Date(2027, 6, 30, 0, 0, 0, 0, time.UTC)
	if !ok || g.GrantID != "purchase:order-1" || g.PaymentRef != "pi_3Nabc" || g.Source != events.GrantPurchase || g.AmountMicros != 5_000_000 ||
		g.AdminKeyID != "ops" || g.Priority != events.DefaultGrantPriority || g.ExpiresAt == nil || !g.ExpiresAt.Equal(exp) {
		t.Fatalf("event payload %+v", back.Payload)
	}
	// Before the grant is folded, a retry publishes the same event again (the fold applies the
	// grant id once); its id is the same.
	w = do(h, "POST", "/v1/accounts/acme/purchases", custAdmin, body)
	if evs := pub.take(); w.Code != 202 || len(evs) != 1 || evs[0].ID != acc.EventID {
		t.Fatalf("retry before the fold: %d %s, %d events", w.Code, w.Body, len(evs))
	}
	// Folded: the grant is live on the account.
	v := rd.accounts["acme"]
	v.Grants = append(v.Grants, view.Grant{GrantID: "purchase:order-1", AmountMicros: 5_000_000, RemainingMicros: 5_000_000, Priority: 100, ExpiresAt: &exp})
	rd.accounts["acme"] = v
	w = do(h, "POST", "/v1/accounts/acme/purchases", custAdmin, body)
	if evs := pub.take(); w.Code != 202 || len(evs) != 0 || !strings.Contains(w.Body.String(), acc.EventID) {
		t.Fatalf("retry after the fold: %d %s, %d events (want the same answer, nothing published)", w.Code, w.Body, len(evs))
	}
	for _, c := range []struct{ name, body string }{
		{"other amount", `{"purchase_id":"order-1","payment_ref":"pi_3Nabc","amount_micros":6000000,"expires_at":"2027-06-30T00:00:00Z"}`},
		{"other expiry", `{"purchase_id":"order-1","payment_ref":"pi_3Nabc","amount_micros":5000000,"expires_at":"2027-06-29T00:00:00Z"}`},
		{"no expiry", `{"purchase_id":"order-1","payment_ref":"pi_3Nabc","amount_micros":5000000}`},
	} {
		w := do(h, "POST", "/v1/accounts/acme/purchases", custAdmin, c.body)
		if evs := pub.take(); w.Code != 409 || errCode(t, w) != api.CodeIdempotencyConflict || len(evs) != 0 {
			t.Errorf("%s: %d %s, %d events", c.name, w.Code, w.Body, len(evs))
		}
	}
	// Another purchase id on the same account is another event; the same purchase id on
	// another account too.
	w = do(h, "POST", "/v1/accounts/acme/purchases", custAdmin, `{"purchase_id":"order-2","payment_ref":"pi_2","amount_micros":1}`)
	w2 := do(h, "POST", "/v1/accounts/m1/purchases", custAdmin, body)
	if evs := pub.take(); w.Code != 202 || w2.Code != 202 || len(evs) != 2 || evs[0].ID == acc.EventID || evs[1].ID == acc.EventID || evs[0].ID == evs[1].ID {
		t.Fatalf("other purchases: %d %d, %+v", w.Code, w2.Code, evs)
	}
}

// TestPurchaseValidation: what a purchase must carry.
func TestPurchaseValidation(t *testing.T) {
	h, pub, _ := customerFixture(t)
	long := strings.Repeat("p", api.PurchaseIDCharsMax+1)
	for _, c := range []struct{ name, body string }{
		{"no purchase_id", `{"payment_ref":"pi","amount_micros":5}`},
		{"no payment_ref", `{"purchase_id":"p","amount_micros":5}`},
		{"payment_ref with a space", `{"purchase_id":"p","payment_ref":"pi 1","amount_micros":5}`},
		{"purchase_id too long", `{"purchase_id":"` + long + `","payment_ref":"pi","amount_micros":5}`},
		{"zero amount", `{"purchase_id":"p","payment_ref":"pi","amount_micros":0}`},
		{"amount above the bound", `{"purchase_id":"p","payment_ref":"pi","amount_micros":1000000000000001}`},
		{"expired", `{"purchase_id":"p","payment_ref":"pi","amount_micros":5,"expires_at":"2020-01-01T00:00:00Z"}`},
		{"unknown field", `{"purchase_id":"p","payment_ref":"pi","amount_micros":5,"priority":1}`},
	} {
		w := do(h, "POST", "/v1/accounts/acme/purchases", custAdmin, c.body)
		if evs := pub.take(); w.Code != 400 || len(evs) != 0 {
			t.Errorf("%s: %d %s, %d events", c.name, w.Code, w.Body, len(evs))
		}
	}
	if w := do(h, "POST", "/v1/accounts/acme/purchases", custAdmin, `{"purchase_id":"`+long[1:]+`","payment_ref":"pi","amount_micros":5}`); w.Code != 202 {
		t.Errorf("purchase_id at the bound: %d %s", w.Code, w.Body)
	}
}

// TestOtherRolesOnCustomerRoutesNotThrottled: an admin token or edge key sent to a customer
// route is refused without counting as a failed authentication (it cannot succeed there
// whatever it is, so counting it protects nothing), so a tool that calls a customer route
// with its admin token does not lock its address out of the admin API; customer-key guesses
// still count.
func TestOtherRolesOnCustomerRoutesNotThrottled(t *testing.T) {
	th, _ := httpx.NewAuthThrottle(3, time.Minute, 100, nil)
	admin, _ := httpx.ParseKeyringWith("ops:hmac:"+httpx.HMACKey(custSecret, custAdmin), httpx.KeyringOptions{HashSecret: custSecret, TokenPrefix: "ta_", Throttle: th})
	ck, err := api.ParseCustomerKeys("a:hmac:"+httpx.HMACKey(custSecret, custAcct)+":account=acme", custSecret, th)
	if err != nil {
		t.Fatal(err)
	}
	rd := &fakeReader{accounts: map[string]view.Account{"acme": {AccountID: "acme"}}}
	h := api.Handler(api.Config{Admin: admin, Customers: func() *api.CustomerKeys { return ck }, Book: pricebook.Default(), BodyBytesMax: 4096, PageMax: 10}, rd, nil)
	for i := range 10 {
		for _, tok := range []string{custAdmin, custEdgeKey} {
			if w := do(h, "GET", "/v1/customer/accounts/acme", tok, ""); w.Code != 403 {
				t.Fatalf("try %d with %s: %d %s", i, tok, w.Code, w.Body)
			}
		}
	}
	if w := do(h, "GET", "/v1/accounts/acme", custAdmin, ""); w.Code != 200 {
		t.Fatalf("admin route after admin tokens on customer routes: %d %s", w.Code, w.Body)
	}
	for range 3 {
		do(h, "GET", "/v1/customer/accounts/acme", "tcu_guess", "")
	}
	if w := do(h, "GET", "/v1/customer/accounts/acme", custAcct, ""); w.Code != 429 || errCode(t, w) != httpx.CodeTooManyAuthFailures {
		t.Fatalf("after 3 wrong customer keys: %d %s, want 429", w.Code, w.Body)
	}
}

// TestLoadCustomerKeysBound: a keys file above CustomerKeysFileBytesMax is refused.
func TestLoadCustomerKeysBound(t *testing.T) {
	p := t.TempDir() + "/keys"
	line := "# " + strings.Repeat("x", 1000) + "\n"
	if err := os.WriteFile(p, []byte(strings.Repeat(line, api.CustomerKeysFileBytesMax/len(line)+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := api.LoadCustomerKeys(p, custSecret, nil); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized file: %v", err)
	}
	if err := os.WriteFile(p, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := api.LoadCustomerKeys(p, custSecret, nil); err != nil || k.Len() != 0 {
		t.Fatalf("comments only: %v", err)
	}
}
