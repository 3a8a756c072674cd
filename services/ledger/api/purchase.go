package api

import (
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
)

// CodeIdempotencyConflict answers a purchase re-sent with the id of one the ledger already
// holds with a different amount or expiry (409).
const CodeIdempotencyConflict = "idempotency_conflict"

// PurchaseGrantPrefix starts the grant id of a purchase: "purchase:<purchase_id>".
const PurchaseGrantPrefix = "purchase:"

// PurchaseIDCharsMax bounds purchase_id so that its grant id fits events.MaxIDChars.
const PurchaseIDCharsMax = events.MaxIDChars - len(PurchaseGrantPrefix)

// PurchaseRequest is POST /v1/accounts/{id}/purchases, as a payment provider's webhook
// handler sends it once the payment succeeded. PurchaseID is the idempotency key (the
// provider's checkout or order id); PaymentRef is the provider's payment reference, recorded
// on the credits.granted event.
type PurchaseRequest struct {
	PurchaseID   string     `json:"purchase_id"`
	PaymentRef   string     `json:"payment_ref"`
	AmountMicros int64      `json:"amount_micros"`
	ExpiresAt    *time.Time `json:"expires_at,omitempty"`
}

// PurchaseEventID is the envelope id of the credits.granted a purchase publishes: a UUIDv5
// of the account and the purchase id (the account's length first, so that no two pairs
// share an input), so a retry publishes the same event and every consumer dedupes it.
func PurchaseEventID(account, purchaseID string) string {
	return events.DerivedID("purchase:"+strconv.Itoa(len(account))+":"+account, purchaseID)
}

// postPurchase publishes a purchase's grant (source purchase, grant id
// "purchase:<purchase_id>", the default priority) with a deterministic event id. When this
// instance already holds the grant (folded, live), a retry with the same amount and expiry
// is answered with the same event id without publishing again, and one with a different
// amount or expiry is 409 idempotency_conflict. Otherwise (not folded yet, the account lives
// on a peer, or the grant has left the account) it publishes: the fold applies a grant id
// once (see README, Idempotency), so a retry is at most a duplicate event.
func (s *server) postPurchase(w http.ResponseWriter, r *http.Request, id string) {
	var req PurchaseRequest
	if err := httpx.DecodeJSON(r, s.cfg.BodyBytesMax, &req); err != nil {
		httpx.WriteError(w, err)
		return
	}
	if err := events.CheckID("purchase_id", req.PurchaseID); err != nil {
		httpx.WriteError(w, httpx.Validation(err))
		return
	}
	if utf8.RuneCountInString(req.PurchaseID) > PurchaseIDCharsMax {
		httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation, "purchase_id: longer than %d characters", PurchaseIDCharsMax))
		return
	}
	if err := events.CheckID("payment_ref", req.PaymentRef); err != nil {
		httpx.WriteError(w, httpx.Validation(err))
		return
	}
	grantID := PurchaseGrantPrefix + req.PurchaseID
	eventID := PurchaseEventID(id, req.PurchaseID)
	if v, ok := s.r.Account(id); ok {
		if g, found := findGrant(v, grantID); found {
			if g.AmountMicros != req.AmountMicros || !sameExpiry(g.ExpiresAt, req.ExpiresAt) {
				httpx.WriteError(w, httpx.Errorf(http.StatusConflict, CodeIdempotencyConflict,
					"purchase %q was already granted with amount_micros %d and expires_at %s; a retry must send the same",
					req.PurchaseID, g.AmountMicros, expiryString(g.ExpiresAt)))
				return
			}
			httpx.WriteJSON(w, http.StatusAccepted, Accepted{EventID: eventID})
			return
		}
	}
	if now := s.cfg.Now(); req.ExpiresAt != nil && !req.ExpiresAt.After(now) {
		httpx.WriteError(w, httpx.Errorf(http.StatusBadRequest, httpx.CodeValidation,
			"expires_at: %s is not after the ledger's clock (%s): a purchase must expire in the future, before %s",
			req.ExpiresAt.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339), events.MaxTime.Format(time.RFC3339)))
		return
	}
	d := events.CreditsGranted{GrantID: grantID, AccountID: id, AmountMicros: req.AmountMicros, Source: events.GrantPurchase,
		Priority: events.DefaultGrantPriority, ExpiresAt: req.ExpiresAt, AdminKeyID: adminKeyID(r), PaymentRef: req.PaymentRef}
	s.publishAs(w, r, eventID, d, "retry with the same purchase_id")
}

func findGrant(v view.Account, grantID string) (view.Grant, bool) {
	for _, g := range v.Grants {
		if g.GrantID == grantID {
			return g, true
		}
	}
	return view.Grant{}, false
}

func sameExpiry(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

func expiryString(t *time.Time) string {
	if t == nil {
		return "none"
	}
	return t.UTC().Format(time.RFC3339Nano)
}
