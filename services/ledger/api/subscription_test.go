package api_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/pricebook"
)

// TestSubscriptionRoutes: PUT subscribes (anchor default: the ledger's clock), DELETE cancels;
// an unknown plan, a missing plan and anchors out of bounds or in the future are 4xx with
// stable codes and publish nothing.
func TestSubscriptionRoutes(t *testing.T) {
	keys, err := httpx.ParseKeyring("ops:" + httpx.HashSecret(hostileToken))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2027, 3, 10, 12, 0, 0, 0, time.UTC)
	pub := &recordingPublisher{}
	h := api.Handler(api.Config{Admin: keys, Book: pricebook.Default(), BodyBytesMax: 4096, PageMax: 100, PublishTimeout: time.Second,
		Now: func() time.Time { return now }}, nopReader{}, pub)
	do := func(method, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, "/v1/accounts/acme/subscription", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+hostileToken)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	for _, c := range []struct{ body, code string }{
		{`{"plan_id":"gold"}`, api.CodeUnknownPlan},
		{`{}`, httpx.CodeValidation},
		{`{"plan_id":"pro","anchor_at":"2027-03-11T00:00:00Z"}`, api.CodeBadAnchor},
		{`{"plan_id":"pro","anchor_at":"1960-01-01T00:00:00Z"}`, api.CodeBadAnchor},
		{`{"plan_id":"pro","anchor_at":"yesterday"}`, httpx.CodeInvalidJSON},
		{`{"plan_id":"pro","extra":1}`, httpx.CodeInvalidJSON},
	} {
		rec := do(http.MethodPut, c.body)
		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &e)
		if rec.Code != http.StatusBadRequest || e.Error.Code != c.code || len(pub.take()) != 0 {
			t.Errorf("%s: %d %s, want 400 %s and nothing published", c.body, rec.Code, rec.Body, c.code)
		}
	}
	anchor := time.Date(2027, 1, 31, 9, 30, 0, 0, time.UTC)
	for _, c := range []struct {
		method, body string
		want         events.SubscriptionChanged
	}{
		{http.MethodPut, `{"plan_id":"pro"}`, events.SubscriptionChanged{AccountID: "acme", PlanID: "pro", AnchorAt: now, AdminKeyID: "ops"}},
		{http.MethodPut, `{"plan_id":"starter","anchor_at":"2027-01-31T09:30:00Z"}`, events.SubscriptionChanged{AccountID: "acme", PlanID: "starter", AnchorAt: anchor, AdminKeyID: "ops"}},
		{http.MethodDelete, ``, events.SubscriptionChanged{AccountID: "acme", AnchorAt: now, AdminKeyID: "ops"}},
	} {
		rec := do(c.method, c.body)
		evs := pub.take()
		if rec.Code != http.StatusAccepted || len(evs) != 1 {
			t.Fatalf("%s %s: %d %s, %d events", c.method, c.body, rec.Code, rec.Body, len(evs))
		}
		if got := evs[0].Payload.(events.SubscriptionChanged); !reflect.DeepEqual(got, c.want) {
			t.Fatalf("%s %s: published %+v, want %+v", c.method, c.body, got, c.want)
		}
	}
}

// TestAccountSettings: PUT /v1/accounts/{id} carries the organization, notification and
// auto-top-up settings into account.updated, validated.
func TestAccountSettings(t *testing.T) {
	h, pub := hostileHandler(t)
	put := func(body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPut, "/v1/accounts/acme", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+hostileToken)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	// The thresholds are a set: given in any order, published sorted.
	rec := put(`{"tier":"pro","priority":"standard","organization_id":"org-1","notify_usage_permille":[900,500],` +
		`"notify_floor_micros":5,"auto_top_up_threshold_micros":10,"auto_top_up_amount_micros":20}`)
	evs := pub.take()
	if rec.Code != http.StatusAccepted || len(evs) != 1 {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	i64 := func(v int64) *int64 { return &v }
	org := "org-1"
	want := events.AccountUpdated{AccountID: "acme", Tier: "pro", Priority: "standard", AdminKeyID: "ops", OrganizationID: &org,
		NotifyUsagePermille: &[]int32{500, 900}, NotifyFloorMicros: i64(5), AutoTopUpThresholdMicros: i64(10), AutoTopUpAmountMicros: i64(20)}
	if got := evs[0].Payload.(events.AccountUpdated); !reflect.DeepEqual(got, want) {
		t.Fatalf("published %+v, want %+v", got, want)
	}
	// Without settings (as tallyctl account sends it) they are absent: unchanged.
	rec = put(`{"tier":"plus","priority":"batch"}`)
	if evs := pub.take(); rec.Code != http.StatusAccepted || len(evs) != 1 || !reflect.DeepEqual(evs[0].Payload,
		events.AccountUpdated{AccountID: "acme", Tier: "plus", Priority: "batch", AdminKeyID: "ops"}) {
		t.Fatalf("%d %s %+v", rec.Code, rec.Body, evs)
	}
	for _, body := range []string{
		`{"tier":"pro","priority":"standard","auto_top_up_threshold_micros":10}`,
		`{"tier":"pro","priority":"standard","notify_usage_permille":[500,500]}`,
		`{"tier":"pro","priority":"standard","auto_top_up_threshold_micros":10,"auto_top_up_amount_micros":0}`,
		`{"tier":"pro","priority":"standard","notify_floor_micros":-1}`,
		`{"tier":"pro","priority":"standard","organization_id":"bad id"}`,
	} {
		if rec := put(body); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), httpx.CodeValidation) || len(pub.take()) != 0 {
			t.Errorf("%s: %d %s, want 400 validation_failed", body, rec.Code, rec.Body)
		}
	}
}

func init() { knownCodes[api.CodeUnknownPlan], knownCodes[api.CodeBadAnchor] = true, true }

// FuzzSubscriptionHandler throws arbitrary account ids, content types and bodies at
// PUT /v1/accounts/{id}/subscription: no panic, no 5xx, every error the documented JSON shape,
// and a 202 only with one valid subscription.changed published.
func FuzzSubscriptionHandler(f *testing.F) {
	for _, s := range []string{`{"plan_id":"pro"}`, `{"plan_id":"starter","anchor_at":"2020-02-29T23:59:59.999999999Z"}`,
		`{"plan_id":"pro","anchor_at":"2199-12-31T00:00:00Z"}`, `{"plan_id":"pro","anchor_at":"0001-01-01T00:00:00Z"}`,
		`{"plan_id":""}`, `{"plan_id":"gold"}`, `{"plan_id":5}`, `null`, `[]`, `{}`, `{"plan_id":"pro"}{}`} {
		f.Add("acct_1", "application/json", s)
	}
	f.Add("acct é", "application/json", `{"plan_id":"pro"}`)
	f.Add("acct_1", "text/plain", `{"plan_id":"pro"}`)
	h, pub := hostileHandler(f)
	f.Fuzz(func(t *testing.T, account, contentType, body string) {
		if strings.ContainsAny(contentType, "\r\n\x00") {
			return // not a header value net/http would deliver
		}
		req := hostileRequest("subscription", account, contentType, body)
		req.Method = http.MethodPut
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		checkAnswer(t, rec, pub, account, events.TypeSubscriptionChanged)
	})
}
