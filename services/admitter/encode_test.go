package admitter

import (
	"reflect"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

func TestEncodeMatchesEventsPackage(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 123456789, time.FixedZone("x", 3600))
	cases := []events.Data{
		events.RequestStarted{RequestID: "r<1>&\"q\"", AccountID: "äccount-✓", Endpoint: "codex.responses", Tier: "pro",
			Priority: "batch", Funding: "credits", HoldMicros: 5, EstimateMicros: 5, HoldExpiresAt: now,
			PriceBookVersion: "v1", Estimate: events.Units{TokensIn: 3}},
		events.RequestRejected{RequestID: "r2", AccountID: "a", Endpoint: "e", Tier: "t", Priority: "standard",
			Reason: "rate_limited", RetryAfterMs: 10, PriceBookVersion: "v1", KeyID: "k", ClientAddr: "::1"},
		events.RequestFinished{RequestID: "r3", AccountID: "a\u00e9b", Endpoint: "e", Status: "failed", PriceBookVersion: "v1"},
		// Funded: the subject (and the Kafka key, eventKey) is the funding account.
		events.RequestStarted{RequestID: "r4", AccountID: "proj", FundingAccountID: "örg<1>", Endpoint: "codex.responses", Tier: "pro",
			Priority: "standard", Funding: "credits", HoldMicros: 5, EstimateMicros: 5, HoldExpiresAt: now, PriceBookVersion: "v1"},
		events.RequestFinished{RequestID: "r5", AccountID: "proj", FundingAccountID: "örg<1>", Endpoint: "e", Status: "succeeded",
			CostMicros: 3, CreditsMicros: 3, PriceBookVersion: "v1"},
	}
	for _, d := range cases {
		raw, typ, err := encode("admitter/\"host\"\\x\u2028\x01", now, d)
		if err != nil || typ != d.EventType() {
			t.Fatalf("%s: %v", typ, err)
		}
		got, err := events.Decode(raw)
		if err != nil {
			t.Fatalf("decode %s: %v", raw, err)
		}
		want, _ := events.NewWithID(got.ID, "admitter/\"host\"\\x\u2028\x01", now, d)
		wraw, _ := want.Encode()
		wdec, _ := events.Decode(wraw)
		if !reflect.DeepEqual(got.Payload, wdec.Payload) || got.Source != wdec.Source || !got.Time.Equal(wdec.Time) ||
			got.Subject != wdec.Subject || got.Type != wdec.Type {
			t.Fatalf("differs:\n%s\n%s", raw, wraw)
		}
		var account, funder string
		switch p := got.Payload.(type) {
		case events.RequestStarted:
			account, funder = p.AccountID, p.FundingAccountID
		case events.RequestFinished:
			account, funder = p.AccountID, p.FundingAccountID
		default:
			continue
		}
		if key := eventKey(account, funder); got.Subject != key {
			t.Fatalf("subject %q, Kafka key %q", got.Subject, key)
		}
	}
	if _, _, err := encode("s", now, events.RequestFinished{}); err == nil {
		t.Fatal("invalid payload encoded")
	}
}
