// Package events is Tally's event contract: one Go type per event, each with a versioned
// CloudEvents type name and a Validate method. The JSON Schemas in schemas/events describe
// the same shapes; schema_test.go keeps the two in step.
package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/google/uuid"
	fastjson "github.com/segmentio/encoding/json"
)

// SpecVersion is the CloudEvents specification version of every envelope.
const SpecVersion = "1.0"

// MaxEventBytes bounds one encoded event (envelope and data). Larger messages are rejected
// by Decode and go to the dead-letter topic.
const MaxEventBytes = 64 << 10

// Event type names. The suffix is the schema version: a consumer that meets an unknown
// type (including an unknown version) sends the message to the dead-letter topic.
const (
	TypeRequestStarted  = "tally.request.started.v1"
	TypeRequestRejected = "tally.request.rejected.v1"
	TypeRequestFinished = "tally.request.finished.v1"
	TypeRequestExpired  = "tally.request.expired.v1"
	TypeCreditsGranted  = "tally.credits.granted.v1"
	TypeCreditsAdjusted = "tally.credits.adjusted.v1"
	TypeAccountUpdated  = "tally.account.updated.v1"
	TypeBalanceUpdated  = "tally.balance.updated.v1"
	TypeLimitsAdjusted  = "tally.limits.adjusted.v1"
	TypeLedgerEntry     = "tally.ledger.entry.v1"
	TypeAbuseFlagged    = "tally.abuse.flagged.v1"
	TypeClockTick       = "tally.clock.tick.v1"
	// TypeSubscriptionChanged is an input: an account subscribes to a plan, changes or cancels it.
	TypeSubscriptionChanged = "tally.subscription.changed.v1"
	// TypeBudgetChanged is an input: a funding account sets, changes or removes a project's budget.
	TypeBudgetChanged = "tally.budget.changed.v1"
	// TypeNotification and TypeTopUpRequested are ledger outputs on the notifications topic.
	TypeNotification   = "tally.notification.v1"
	TypeTopUpRequested = "tally.topup.requested.v1"
)

// Data is implemented by every event payload.
type Data interface {
	// EventType is the versioned CloudEvents type name.
	EventType() string
	// Subject is the account id the event is about (the Kafka key and the CloudEvents subject).
	Subject() string
	// Validate reports every problem with the payload, joined.
	Validate() error
}

// Envelope is a CloudEvents 1.0 structured-mode JSON event.
type Envelope struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Time            time.Time       `json:"time"`
	Subject         string          `json:"subject"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	Data            json.RawMessage `json:"data"`
}

// Event is a decoded envelope together with its typed payload.
type Event struct {
	Envelope
	Payload Data `json:"-"`
}

// New builds an event with a fresh UUIDv7 id stamped at t.
func New(source string, t time.Time, d Data) (Event, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return Event{}, fmt.Errorf("events: new id: %w", err)
	}
	return NewWithID(id.String(), source, t, d)
}

// NewWithID builds an event with a caller-chosen id (deterministic outputs use UUIDv5 ids).
func NewWithID(id, source string, t time.Time, d Data) (Event, error) {
	raw, err := json.Marshal(d)
	if err != nil {
		return Event{}, fmt.Errorf("events: encode %s: %w", d.EventType(), err)
	}
	e := Event{
		Envelope: Envelope{
			SpecVersion: SpecVersion, ID: id, Source: source, Type: d.EventType(),
			Time: t.UTC(), Subject: d.Subject(), DataContentType: "application/json", Data: raw,
		},
		Payload: d,
	}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}

// Encode returns the structured-mode JSON of the event.
func (e Event) Encode() ([]byte, error) { return json.Marshal(e.Envelope) }

// minYear and maxYear bound an event's time and every time an event carries: [MinTime, MaxTime).
const minYear, maxYear = 1970, 2200

// MinTime and MaxTime bound every time in an event (the envelope's and the payload's): a time
// must be at or after MinTime and before MaxTime (2200-01-01T00:00:00Z). Nanoseconds since the
// epoch in an int64, the ledger's clock and ClickHouse's DateTime64(9), end in April 2262; a
// time past that would wrap around to 1677 when converted, so it is refused here, well before.
var (
	MinTime = time.Date(minYear, 1, 1, 0, 0, 0, 0, time.UTC)
	MaxTime = time.Date(maxYear, 1, 1, 0, 0, 0, 0, time.UTC)
)

// CheckTime reports a time outside [MinTime, MaxTime) (or zero) as an error naming the field.
// It is exported for the HTTP edges.
func CheckTime(name string, t time.Time) error {
	if t.IsZero() {
		return fmt.Errorf("%s: required", name)
	}
	if t.Before(MinTime) || !t.Before(MaxTime) {
		return fmt.Errorf("%s: %s outside [%s, %s)", name, t.UTC().Format(time.RFC3339Nano),
			MinTime.Format(time.RFC3339), MaxTime.Format(time.RFC3339))
	}
	return nil
}

// Validate checks the envelope and the payload.
func (e Event) Validate() error {
	var errs []error
	if e.SpecVersion != SpecVersion {
		errs = append(errs, fmt.Errorf("specversion: want %q, got %q", SpecVersion, e.SpecVersion))
	}
	if id, ok := ParseID(e.ID); !ok {
		errs = append(errs, fmt.Errorf("id: not a UUID: %q", e.ID))
	} else if v := id.Version(); v != 7 && v != 5 {
		errs = append(errs, fmt.Errorf("id: want UUID version 7 (or 5 for derived ids), got %d", v))
	}
	if e.Source == "" || len(e.Source) > 256 {
		errs = append(errs, errors.New("source: required, at most 256 bytes"))
	}
	if e.Time.IsZero() {
		errs = append(errs, errors.New("time: required"))
	} else if y := e.Time.UTC().Year(); y < minYear || y >= maxYear {
		// Beyond these, times no longer fit the int64 nanoseconds that the ledger's clock and
		// ClickHouse's DateTime64 use.
		errs = append(errs, fmt.Errorf("time: year %d outside [%d, %d)", y, minYear, maxYear))
	}
	if e.Payload == nil {
		errs = append(errs, fmt.Errorf("type: unknown event type %q", e.Type))
	} else {
		if e.Type != e.Payload.EventType() {
			errs = append(errs, fmt.Errorf("type: %q does not match payload %q", e.Type, e.Payload.EventType()))
		}
		if e.Subject != e.Payload.Subject() {
			errs = append(errs, fmt.Errorf("subject: %q does not match the payload's account %q", e.Subject, e.Payload.Subject()))
		}
		if err := e.Payload.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("data: %w", err))
		}
	}
	return errors.Join(errs...)
}

// newPayload returns an empty payload for a type name, or nil for an unknown type.
func newPayload(typ string) Data {
	switch typ {
	case TypeRequestStarted:
		return &RequestStarted{}
	case TypeRequestRejected:
		return &RequestRejected{}
	case TypeRequestFinished:
		return &RequestFinished{}
	case TypeRequestExpired:
		return &RequestExpired{}
	case TypeCreditsGranted:
		return &CreditsGranted{}
	case TypeCreditsAdjusted:
		return &CreditsAdjusted{}
	case TypeAccountUpdated:
		return &AccountUpdated{}
	case TypeBalanceUpdated:
		return &BalanceUpdated{}
	case TypeLimitsAdjusted:
		return &LimitsAdjusted{}
	case TypeLedgerEntry:
		return &LedgerEntry{}
	case TypeAbuseFlagged:
		return &AbuseFlagged{}
	case TypeClockTick:
		return &ClockTick{}
	case TypeSubscriptionChanged:
		return &SubscriptionChanged{}
	case TypeBudgetChanged:
		return &BudgetChanged{}
	case TypeNotification:
		return &Notification{}
	case TypeTopUpRequested:
		return &TopUpRequested{}
	}
	return nil
}

// Types lists every event type name.
var Types = []string{
	TypeRequestStarted, TypeRequestRejected, TypeRequestFinished, TypeRequestExpired,
	TypeCreditsGranted, TypeCreditsAdjusted, TypeAccountUpdated, TypeBalanceUpdated,
	TypeLimitsAdjusted, TypeLedgerEntry, TypeAbuseFlagged, TypeClockTick,
	TypeSubscriptionChanged, TypeNotification, TypeTopUpRequested, TypeBudgetChanged,
}

// Decode parses and validates one structured-mode event. Unknown fields, unknown types,
// oversize messages and invalid payloads are errors; the caller dead-letters them with the
// error text as the reason.
func Decode(b []byte) (Event, error) {
	if len(b) > MaxEventBytes {
		return Event{}, fmt.Errorf("events: message of %d bytes exceeds %d", len(b), MaxEventBytes)
	}
	var e Event
	if err := strictUnmarshal(b, &e.Envelope); err != nil {
		return Event{}, fmt.Errorf("events: envelope: %w", err)
	}
	e.Payload = newPayload(e.Type)
	if e.Payload == nil {
		return Event{}, fmt.Errorf("events: unknown event type %q", e.Type)
	}
	if err := strictUnmarshal(e.Data, e.Payload); err != nil {
		return Event{}, fmt.Errorf("events: %s data: %w", e.Type, err)
	}
	if err := checkRequired(e.Type, e.Data); err != nil {
		return Event{}, fmt.Errorf("events: %s data: %w", e.Type, err)
	}
	// Store the payload by value so that type switches see plain values.
	e.Payload = deref(e.Payload)
	if err := e.Validate(); err != nil {
		return Event{}, fmt.Errorf("events: %s %s: %w", e.Type, e.ID, err)
	}
	return e, nil
}

// required lists, per event type, the JSON fields its Go type always encodes (no omitempty):
// a message without one of them is invalid, as the JSON Schema says, rather than zero.
var required = func() map[string][]string {
	m := map[string][]string{}
	for _, typ := range Types {
		rt := reflect.TypeOf(deref(newPayload(typ)))
		for i := 0; i < rt.NumField(); i++ {
			name, opts, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			if !strings.Contains(opts, "omitempty") {
				m[typ] = append(m[typ], name)
			}
		}
	}
	return m
}()

func checkRequired(typ string, data []byte) error {
	req := required[typ]
	var seen uint64 // bit i: req[i] present; every type has fewer than 64 fields
	topLevelKeys(data, func(key []byte) {
		for i, f := range req {
			if string(key) == f {
				seen |= 1 << i
				return
			}
		}
	})
	if seen == 1<<len(req)-1 {
		return nil
	}
	var missing []string
	for i, f := range req {
		if seen&(1<<i) == 0 {
			missing = append(missing, f)
		}
	}
	return fmt.Errorf("missing required field(s): %s", strings.Join(missing, ", "))
}

// topLevelKeys calls fn with each key of the JSON object in data, which must already be known
// to be valid JSON (it was decoded). Keys are passed raw, without unescaping: Tally's field
// names have no escapes, so an escaped key never matches a required name and counts as absent.
func topLevelKeys(data []byte, fn func(key []byte)) {
	depth := 0
	expectKey := false
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '{', '[':
			depth++
			expectKey = c == '{' && depth == 1
		case '}', ']':
			depth--
		case ',':
			expectKey = depth == 1
		case '"':
			start := i + 1
			for i++; i < len(data) && data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
				}
			}
			if expectKey && depth == 1 && i <= len(data) {
				fn(data[start:i])
				expectKey = false
			}
		}
	}
}

// strictUnmarshal decodes one JSON value into v: unknown fields, fields whose names differ in
// case, and trailing data are errors. It uses segmentio/encoding/json, a drop-in for
// encoding/json that is several times faster, because every consumer decodes every message.
func strictUnmarshal(b []byte, v any) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return errors.New("empty")
	}
	rest, err := fastjson.Parse(b, v, fastjson.DisallowUnknownFields|fastjson.DontMatchCaseInsensitiveStructFields)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

func deref(d Data) Data {
	switch p := d.(type) {
	case *RequestStarted:
		return *p
	case *RequestRejected:
		return *p
	case *RequestFinished:
		return *p
	case *RequestExpired:
		return *p
	case *CreditsGranted:
		return *p
	case *CreditsAdjusted:
		return *p
	case *AccountUpdated:
		return *p
	case *BalanceUpdated:
		return *p
	case *LimitsAdjusted:
		return *p
	case *LedgerEntry:
		return *p
	case *AbuseFlagged:
		return *p
	case *ClockTick:
		return *p
	case *SubscriptionChanged:
		return *p
	case *BudgetChanged:
		return *p
	case *Notification:
		return *p
	case *TopUpRequested:
		return *p
	}
	return d
}

// DerivedID returns a deterministic UUIDv5 for an output derived from a causing event id and
// a leg name, so that a replay reproduces output ids exactly.
func DerivedID(causeID, leg string) string {
	return uuid.NewSHA1(derivedNamespace, []byte(causeID+"/"+leg)).String()
}

var derivedNamespace = uuid.MustParse("6f0b6c1e-5a1d-4b8e-9a57-7a1e11e7a11e")
