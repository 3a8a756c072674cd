// Package rows is the sink's pure core: it turns decoded events and their Kafka positions
// into table rows, groups them into per-partition batches with their deduplication token,
// and declares the one-method storage contract. It imports neither Kafka nor ClickHouse.
package rows

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tallyhq/tally/shared/events"
)

// Storage writes one batch atomically with respect to redelivery: a batch sent twice with the
// same Token is stored once. It is the sink's only write path to the analytics store.
type Storage interface {
	BatchInsert(ctx context.Context, b *Batch) error
}

// Position is a message's place in Kafka.
type Position struct {
	Topic     string
	Partition int32
	Offset    int64
}

// Usage is one row of usage_events. Money is int64 micro-credits. Fields that an event type
// does not carry stay zero.
type Usage struct {
	EventID   string
	Type      string
	Time      time.Time
	Source    string
	AccountID string
	// FundingAccountID is, on a request event of a funded account (a project), the account
	// whose balance pays (its organization; the envelope subject); '' when the account funds
	// itself and on every other type.
	FundingAccountID string
	RequestID        string
	KeyID            string
	ClientAddr       string
	Endpoint         string
	Model            string
	Tier             string
	Priority         string
	Funding          string
	Status           string
	Reason           string
	EstimateMicros   int64
	HoldMicros       int64
	AllowanceMicros  int64
	CostMicros       int64
	AmountMicros     int64
	// PaidAllowanceMicros, PaidCreditsMicros and OverageMicros are request.finished's split
	// of the cost (0 on other types and on events that do not carry it).
	PaidAllowanceMicros int64
	PaidCreditsMicros   int64
	OverageMicros       int64
	HoldExpiresAt       time.Time
	VideoSeconds        int64
	Resolution          string
	TokensIn            int64
	TokensOut           int64
	ComputeMs           int64
	DurationMs          int64
	RetryAfterMs        int64
	Score               float64
	PriceBookVersion    string
	Attrs               map[string]string
	Pos                 Position
}

// Ledger is one row of ledger_entries.
type Ledger struct {
	EntryID       string
	TransactionID string
	AccountID     string
	LedgerAccount string
	AmountMicros  int64
	Kind          string
	CauseEventID  string
	RequestID     string
	ProjectID     string // the project of a funded request's line ('' otherwise; 0013)
	GrantID       string
	EffectiveAt   time.Time
	EventID       string
	Pos           Position
}

// epoch is the "unset" time: ClickHouse DateTime64 columns are not nullable here, and the
// Unix epoch sorts below every real time, which requests_v's max() relies on.
var epoch = time.Unix(0, 0).UTC()

// FromEvent maps a decoded event to its row. ok is false for event types the sink does not
// store (balance.updated and limits.adjusted live on compacted topics the sink does not read;
// if one appears on an input topic it is dead-lettered by the caller). A clock tick (the
// ledger's, on an idle events-topic partition) is read and skipped: ok with no row.
//
// A row's account_id is the envelope subject, except on the request events of a funded
// account (a project whose organization's balance pays): their subject (and Kafka key) is the
// organization, while the request is the project's (its request ids are its own), so
// account_id is the payload's account and funding_account_id the organization.
func FromEvent(ev events.Event, pos Position) (u *Usage, l *Ledger, ok bool) {
	if _, tick := ev.Payload.(events.ClockTick); tick {
		return nil, nil, true
	}
	if le, isLedger := ev.Payload.(events.LedgerEntry); isLedger {
		return nil, &Ledger{
			EntryID: le.EntryID, TransactionID: le.TransactionID, AccountID: le.AccountID,
			LedgerAccount: le.LedgerAccount, AmountMicros: le.AmountMicros, Kind: le.Kind,
			CauseEventID: le.CauseEventID, RequestID: le.RequestID, ProjectID: le.ProjectID, GrantID: le.GrantID,
			EffectiveAt: le.EffectiveAt.UTC(), EventID: ev.ID, Pos: pos,
		}, true
	}
	r := &Usage{EventID: ev.ID, Type: ev.Type, Time: ev.Time.UTC(), Source: ev.Source,
		AccountID: ev.Subject, HoldExpiresAt: epoch, Pos: pos}
	switch p := ev.Payload.(type) {
	case events.RequestStarted:
		r.AccountID, r.FundingAccountID = p.AccountID, p.FundingAccountID
		r.RequestID, r.Endpoint, r.Model, r.Tier, r.Priority, r.Funding = p.RequestID, p.Endpoint, p.Model, p.Tier, p.Priority, p.Funding
		r.KeyID, r.ClientAddr, r.PriceBookVersion = p.KeyID, p.ClientAddr, p.PriceBookVersion
		r.EstimateMicros, r.HoldMicros, r.AllowanceMicros, r.HoldExpiresAt = p.EstimateMicros, p.HoldMicros, p.AllowanceMicros, p.HoldExpiresAt.UTC()
		r.setUnits(p.Estimate)
	case events.RequestRejected:
		r.RequestID, r.Endpoint, r.Model, r.Tier, r.Priority, r.Reason = p.RequestID, p.Endpoint, p.Model, p.Tier, p.Priority, p.Reason
		r.KeyID, r.ClientAddr, r.PriceBookVersion = p.KeyID, p.ClientAddr, p.PriceBookVersion
		r.EstimateMicros, r.RetryAfterMs = p.EstimateMicros, p.RetryAfterMs
	case events.RequestFinished:
		r.AccountID, r.FundingAccountID = p.AccountID, p.FundingAccountID
		r.RequestID, r.Endpoint, r.Model, r.Status = p.RequestID, p.Endpoint, p.Model, p.Status
		r.KeyID, r.ClientAddr, r.PriceBookVersion = p.KeyID, p.ClientAddr, p.PriceBookVersion
		r.CostMicros, r.DurationMs = p.CostMicros, p.DurationMs
		r.PaidAllowanceMicros, r.PaidCreditsMicros, r.OverageMicros = p.AllowanceMicros, p.CreditsMicros, p.OverageMicros
		r.setUnits(p.Usage)
	case events.RequestExpired:
		r.AccountID, r.FundingAccountID = p.AccountID, p.FundingAccountID
		r.RequestID, r.Endpoint, r.Funding = p.RequestID, p.Endpoint, p.Funding
		r.HoldMicros, r.AllowanceMicros, r.AmountMicros = p.HoldMicros, p.AllowanceMicros, p.ReleasedMicros
		r.Attrs = map[string]string{"started_event_id": p.StartedEventID, "expired_at": p.ExpiredAt.UTC().Format(time.RFC3339Nano)}
	case events.CreditsGranted:
		r.AmountMicros, r.Reason = p.AmountMicros, p.Source
		r.Attrs = map[string]string{"grant_id": p.GrantID, "priority": strconv.Itoa(int(p.Priority))}
		if p.ExpiresAt != nil {
			r.Attrs["expires_at"] = p.ExpiresAt.UTC().Format(time.RFC3339Nano)
		}
		if p.PaymentRef != "" {
			r.Attrs["payment_ref"] = p.PaymentRef // a purchase's provider reference (no column of its own)
		}
	case events.CreditsAdjusted:
		r.AmountMicros, r.Reason = p.AmountMicros, p.Reason
		r.Attrs = map[string]string{"adjustment_id": p.AdjustmentID}
	case events.AccountUpdated:
		r.Tier, r.Priority = p.Tier, p.Priority
		r.Attrs = map[string]string{"suspended": strconv.FormatBool(p.Suspended)}
		if p.OrganizationID != nil {
			r.Attrs["organization_id"] = *p.OrganizationID
		}
		if p.FundingAccountID != nil { // "" is kept: back to the account's own balance
			r.Attrs["funding_account_id"] = *p.FundingAccountID
		}
	case events.BudgetChanged:
		// account_id is the funding account (the subject); the budget goes to attrs, as
		// account.updated's settings do (no column of its own; amount_micros is money moved).
		r.Attrs = map[string]string{"project_id": p.ProjectID, "budget_micros": strconv.FormatInt(p.BudgetMicros, 10)}
		if p.Remove {
			r.Attrs["remove"] = "true"
		}
	case events.SubscriptionChanged:
		r.Attrs = map[string]string{"plan_id": p.PlanID, "anchor_at": p.AnchorAt.UTC().Format(time.RFC3339Nano)}
	case events.AbuseFlagged:
		r.KeyID, r.Reason, r.Score, r.Status = p.KeyID, p.Rule, p.Score, p.Action
		r.Attrs = make(map[string]string, len(p.Evidence)+3)
		for k, v := range p.Evidence {
			r.Attrs[k] = v
		}
		r.Attrs["flag_id"] = p.FlagID
		r.Attrs["window_start"] = p.WindowStart.UTC().Format(time.RFC3339)
		r.Attrs["window_end"] = p.WindowEnd.UTC().Format(time.RFC3339)
	default:
		return nil, nil, false
	}
	return r, nil, true
}

func (r *Usage) setUnits(u events.Units) {
	r.VideoSeconds, r.Resolution, r.TokensIn, r.TokensOut, r.ComputeMs = u.VideoSeconds, u.Resolution, u.TokensIn, u.TokensOut, u.ComputeMs
}

// Range is a contiguous offset range of one topic partition: the unit of a batch, of its
// deduplication token and of its recorded intent.
type Range struct {
	Topic     string
	Partition int32
	First     int64
	Last      int64
}

// Token is the insert_deduplication_token of the batch covering r: the same range always
// gives the same token, and a redelivered batch is re-formed on exactly its recorded range.
// Hashing keeps it short whatever the topic name; the readable prefix helps debugging.
func (r Range) Token() string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%d\x00%d", r.Topic, r.Partition, r.First, r.Last)))
	return fmt.Sprintf("p%d-%d-%d-%s", r.Partition, r.First, r.Last, hex.EncodeToString(h[:12]))
}

// Contains reports whether offset o lies in r.
func (r Range) Contains(o int64) bool { return o >= r.First && o <= r.Last }

func (r Range) String() string {
	return fmt.Sprintf("%s/%d[%d..%d]", r.Topic, r.Partition, r.First, r.Last)
}

// GroupToken is the insert_deduplication_token of the rows of ranges rs inserted together
// (one flush of several partitions): the same set of ranges always gives the same token,
// whatever their order. A single range keeps its own Range.Token, so an intent recorded by a
// version that inserted one range at a time is re-sent with the token it was inserted with.
func GroupToken(rs []Range) string {
	if len(rs) == 1 {
		return rs[0].Token()
	}
	sorted := append([]Range(nil), rs...)
	SortRanges(sorted)
	h := sha256.New()
	for _, r := range sorted {
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00%d\x00", r.Topic, r.Partition, r.First, r.Last)
	}
	return fmt.Sprintf("g%d-%s", len(sorted), hex.EncodeToString(h.Sum(nil)[:16]))
}

// SortRanges orders ranges by topic, partition and first offset: the order of a merged
// batch's rows, so that a group re-formed after a crash is the same insert.
func SortRanges(rs []Range) {
	slices.SortFunc(rs, compareRanges)
}

func compareRanges(a, b Range) int {
	return cmp.Or(strings.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.First, b.First))
}

// Intent is a recorded insert: its token and every range its rows came from.
type Intent struct {
	Token  string
	Ranges []Range
}

// Batch is the rows of one contiguous offset range of one partition, or (Merge) of the
// ranges of several partitions inserted together. Messages that produced no row
// (dead-lettered ones, producer duplicates) still widen the range, so that the committed
// offset passes them.
type Batch struct {
	Range Range
	// Ranges, when set, are the ranges of a merged batch (Range is then unused).
	Ranges []Range
	// RecordedToken, when set, is the token recorded for a batch re-formed after a crash.
	RecordedToken string
	// Usage and Ledger keep the rows the decoders allocated: a batch of 50,000 rows grows
	// by appending pointers, not by copying 400-byte rows into ever larger arrays.
	Usage  []*Usage
	Ledger []*Ledger
	// Bytes is the sum of the source message sizes, the measure SINK_BATCH_BYTES_MAX bounds.
	Bytes int64
	// Messages counts every message in the range, rows or not.
	Messages int
}

// Rows is the number of table rows in b.
func (b *Batch) Rows() int { return len(b.Usage) + len(b.Ledger) }

// AllRanges are the ranges b's rows came from.
func (b *Batch) AllRanges() []Range {
	if len(b.Ranges) > 0 {
		return b.Ranges
	}
	return []Range{b.Range}
}

// Token is b's insert_deduplication_token: the recorded one of a re-formed batch, else the
// GroupToken of its ranges.
func (b *Batch) Token() string {
	if b.RecordedToken != "" {
		return b.RecordedToken
	}
	return GroupToken(b.AllRanges())
}

func (b *Batch) String() string {
	rs := b.AllRanges()
	if len(rs) == 1 {
		return rs[0].String()
	}
	return fmt.Sprintf("%d ranges from %s", len(rs), rs[0])
}

// Merge concatenates batches into one, its rows in SortRanges order of the batches' ranges:
// one flush becomes one insert per table (each insert has a large fixed cost in ClickHouse).
func Merge(bs []*Batch) *Batch {
	sorted := append([]*Batch(nil), bs...)
	slices.SortFunc(sorted, func(a, b *Batch) int { return compareRanges(a.Range, b.Range) })
	m := &Batch{}
	nu, nl := 0, 0
	for _, b := range sorted {
		nu, nl = nu+len(b.Usage), nl+len(b.Ledger)
	}
	m.Usage, m.Ledger = make([]*Usage, 0, nu), make([]*Ledger, 0, nl)
	for _, b := range sorted {
		m.Ranges = append(m.Ranges, b.Range)
		m.Usage = append(m.Usage, b.Usage...)
		m.Ledger = append(m.Ledger, b.Ledger...)
		m.Bytes += b.Bytes
		m.Messages += b.Messages
	}
	return m
}

// Add extends b with the message at offset o of size n bytes and its row, if any.
// The first Add fixes the batch's topic, partition and first offset.
func (b *Batch) Add(pos Position, n int, u *Usage, l *Ledger) {
	if b.Messages == 0 {
		b.Range = Range{Topic: pos.Topic, Partition: pos.Partition, First: pos.Offset}
	}
	b.Range.Last = pos.Offset
	b.Messages++
	b.Bytes += int64(n)
	if u != nil {
		b.Usage = append(b.Usage, u)
	}
	if l != nil {
		b.Ledger = append(b.Ledger, l)
	}
}
