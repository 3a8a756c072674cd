// Package fold is the ledger's pure core: it folds decoded events of one events-topic
// partition, in log order, into per-account balances, a double-entry journal, request
// expiries and limit factors. It imports only the standard library, shared/events and
// shared/pricebook; time comes from the log (event times, the partition watermark), never
// from the wall clock, so replaying the same log gives identical state and outputs.
//
// One State folds one partition. Accounts are keyed to partitions (the Kafka key is the
// account id), so partitions are independent and can be folded in parallel.
package fold

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tallyhq/tally/shared/bounds"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// Ranges of the per-account bounds in Config: Validate checks each bound against its range
// here, the ledger's settings validate against the same constants, and the state codec
// rejects records larger than the largest policy can produce.
const (
	ParkedPerAccountMaxLimit = 1024    // ParkedPerAccountMax in [0, 1024]
	HoldsPerAccountMaxLimit  = 100_000 // HoldsPerAccountMax in [1, 100000]
	GrantsPerAccountMaxLimit = 10_000  // GrantsPerAccountMax in [1, 10000]
	DedupePerAccountMaxFloor = 16      // DedupePerAccountMax in [16, 1<<20]
	DedupePerAccountMaxLimit = 1 << 20
)

// Config is the fold's policy. Every bound is named and validated.
type Config struct {
	// Book is the price book: endpoint capacities and reserves, tier allowance windows.
	Book *pricebook.Book
	// PartitionsTotal scales this partition's in-flight count to an estimate of the whole
	// system's (accounts hash uniformly over partitions). Default 1.
	PartitionsTotal int64
	// AccountSharePermille bounds one account's weight in that estimate: per endpoint and
	// priority, an account's holds are scaled by PartitionsTotal only up to this share of the
	// endpoint's capacity (at least one hold); beyond it they count one for one, so one
	// account's holds, all on its own partition, are not multiplied into a load that sheds
	// everyone. Set it to the admitter's per-account share. Default 100, range [1, 1000].
	AccountSharePermille int64
	// ParkTimeoutNs is how long (log time) a finish without its start waits before it is
	// settled as a finish for an unknown request. Default 1 h.
	ParkTimeoutNs int64
	// ParkedPerAccountMax bounds the finishes parked per account; beyond it a finish is
	// settled at once as unknown. Default 8.
	ParkedPerAccountMax int
	// HoldsPerAccountMax bounds the open holds per account; a start beyond it is recorded
	// as an anomaly and places no hold. Default 1024.
	HoldsPerAccountMax int
	// GrantsPerAccountMax bounds the live grants per account; a grant beyond it is added to
	// the account's unexpiring pool instead of its own slot. Default 64.
	GrantsPerAccountMax int
	// DedupeWindowNs is how long (log time) an account remembers an applied id (see Dedupe).
	// An input event whose event time is older than the watermark minus this window cannot be
	// proven new: it is not applied but recorded as AnomalyTooLate. Default 24 h.
	DedupeWindowNs int64
	// FutureSkewNsMax bounds how far an event's own time may run ahead of its Kafka record
	// timestamp (Input.RecordTimeNs, stamped when it was produced). An event further ahead is
	// not applied and does not move the partition's clock: it is recorded as
	// AnomalyFutureTime. Without this bound one event stamped next year would advance the
	// watermark, expire every open hold at once and make every later event too late. The
	// record timestamp is part of the log, so a replay refuses exactly the same events.
	// Default 5 min.
	FutureSkewNsMax int64
	// RenewalCatchUpMax bounds the billing periods a subscription catches up at once after a
	// silence of the log: the missed periods are renewed in order, at most this many before
	// the current one; older ones are skipped (no allocation, nothing carried). Default 12,
	// range [1, 1200].
	RenewalCatchUpMax int
	// DedupePerAccountMax bounds the ids an account remembers; beyond it the oldest is
	// evicted (counted in Output.Evicted) and the account's dedupe floor rises. Default 4096.
	DedupePerAccountMax int
	// History factor policy.
	HistoryWindowNs      int64 // rejection-ratio window length, aligned to the epoch. Default 1 h.
	RejectRequestsMin    int32 // requests in the last two windows before the ratio counts. Default 20.
	RejectRatioPermille  int32 // ratio above which the factor drops. Default 500.
	RejectFactorPermille int32 // factor while the ratio is above. Default 700.
	FlagPenaltyPermille  int32 // penalty per throttle flag, decaying linearly. Default 500.
	FlagDecayNs          int64 // time for a flag's penalty to decay to zero. Default 24 h.
	BlockNs              int64 // how long a block flag sets the factor to 0. Default 24 h.
	CleanRequestsMin     int64 // settled requests, no overage, no live flag -> bonus. Default 100.
	CleanBonusPermille   int32 // the clean-history factor. Default 1200.
}

// DefaultConfig returns the default policy over book.
func DefaultConfig(book *pricebook.Book) Config {
	return Config{
		Book: book, PartitionsTotal: 1, AccountSharePermille: 100, ParkTimeoutNs: int64(time.Hour), ParkedPerAccountMax: 8,
		HoldsPerAccountMax: 1024, GrantsPerAccountMax: 64, DedupeWindowNs: int64(24 * time.Hour), DedupePerAccountMax: 4096,
		FutureSkewNsMax: int64(5 * time.Minute), RenewalCatchUpMax: 12,
		HistoryWindowNs: int64(time.Hour), RejectRequestsMin: 20, RejectRatioPermille: 500,
		RejectFactorPermille: 700, FlagPenaltyPermille: 500, FlagDecayNs: int64(24 * time.Hour),
		BlockNs: int64(24 * time.Hour), CleanRequestsMin: 100, CleanBonusPermille: 1200,
	}
}

// Validate reports every bad field, joined.
func (c Config) Validate() error {
	var errs []error
	if c.Book == nil {
		errs = append(errs, errors.New("fold: Book: required"))
	} else if err := c.Book.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("fold: Book: %w", err))
	}
	pos := bounds.Into[int64](&errs, "fold: ")
	day := int64(24 * time.Hour)
	pos("PartitionsTotal", c.PartitionsTotal, 1, 100_000)
	pos("AccountSharePermille", c.AccountSharePermille, 1, 1000)
	pos("ParkTimeoutNs", c.ParkTimeoutNs, int64(time.Second), 7*day)
	pos("ParkedPerAccountMax", int64(c.ParkedPerAccountMax), 0, ParkedPerAccountMaxLimit)
	pos("HoldsPerAccountMax", int64(c.HoldsPerAccountMax), 1, HoldsPerAccountMaxLimit)
	pos("GrantsPerAccountMax", int64(c.GrantsPerAccountMax), 1, GrantsPerAccountMaxLimit)
	pos("DedupeWindowNs", c.DedupeWindowNs, int64(time.Second), 31*day)
	pos("DedupePerAccountMax", int64(c.DedupePerAccountMax), DedupePerAccountMaxFloor, DedupePerAccountMaxLimit)
	pos("FutureSkewNsMax", c.FutureSkewNsMax, int64(time.Second), day)
	pos("RenewalCatchUpMax", int64(c.RenewalCatchUpMax), 1, 1200)
	pos("HistoryWindowNs", c.HistoryWindowNs, int64(time.Minute), 31*day)
	pos("RejectRequestsMin", int64(c.RejectRequestsMin), 1, 1_000_000)
	pos("RejectRatioPermille", int64(c.RejectRatioPermille), 0, 1000)
	pos("RejectFactorPermille", int64(c.RejectFactorPermille), 0, events.MaxFactorPermille)
	pos("FlagPenaltyPermille", int64(c.FlagPenaltyPermille), 0, 1000)
	pos("FlagDecayNs", c.FlagDecayNs, int64(time.Minute), 365*day)
	pos("BlockNs", c.BlockNs, int64(time.Minute), 365*day)
	pos("CleanRequestsMin", c.CleanRequestsMin, 1, 1<<40)
	pos("CleanBonusPermille", int64(c.CleanBonusPermille), 1000, events.MaxFactorPermille)
	return errors.Join(errs...)
}

// Input is one decoded event at its position in the partition.
type Input struct {
	Offset int64
	Event  *events.Event
	// RecordTimeNs is the Kafka record's timestamp (ns since the epoch); 0 or less when the
	// record has none, and then the event time is not checked against it.
	RecordTimeNs int64
}

// Funding of a hold.
const (
	fundCredits   uint8 = 1
	fundAllowance uint8 = 2
	fundSplit     uint8 = 3 // allowance and credits
)

// Grant is one credit grant's live remainder. Amount is the original amount: Remaining plus
// what open holds took from the grant never exceeds it.
type Grant struct {
	ID        string `json:"id"`
	EventID   UUID   `json:"event_id"`
	Amount    int64  `json:"amount"`
	Remaining int64  `json:"remaining"`
	Priority  int32  `json:"priority"`
	ExpiresNs int64  `json:"expires_ns,omitempty"` // 0 = never
}

// HoldPart is the part of a credit hold taken from one grant (Grant is the grant's event id)
// or, when Grant is zero, from the unexpiring pool (Account.ExtraMicros).
type HoldPart struct {
	Grant  UUID  `json:"grant"`
	Micros int64 `json:"micros"`
}

// Hold is one open request.
type Hold struct {
	RequestID string `json:"request_id"`
	// ProjectID is the funded account (project) whose request this is when the account funds
	// it (an organization's shared balance); "" for the account's own request. A hold is
	// known by (ProjectID, RequestID): two projects may use the same request id.
	ProjectID string `json:"project_id,omitempty"`
	EventID   UUID   `json:"event_id"`
	Endpoint  string `json:"endpoint"` // interned to the price book's key when known
	Priority  uint8  `json:"priority"` // index: 0 critical, 1 standard, 2 batch
	Funding   uint8  `json:"funding"`
	// HasParts says that the hold recorded where HoldMicros came from (every hold placed
	// since the state codec's version 3; a hold restored from a version-2 record has none,
	// and its release goes to the pool).
	HasParts        bool  `json:"has_parts,omitempty"`
	HoldMicros      int64 `json:"hold_micros"`      // actually held from available
	AllowanceMicros int64 `json:"allowance_micros"` // reserved from allowance windows
	StartNs         int64 `json:"start_ns"`
	ExpiresNs       int64 `json:"expires_ns"`
	// FirstGrant and MoreParts are the hold's parts, in burn order: a charge consumes them
	// from the front, a release gives each back to its grant (or to the pool). Most holds
	// take from one grant: the first part is FirstGrant with what the other parts leave of
	// HoldMicros, so that a hold costs 16 bytes more and placing it does not allocate. At most
	// one part per grant plus one from the pool: bounded by GrantsPerAccountMax+1.
	FirstGrant UUID        `json:"first_grant"`
	MoreParts  *[]HoldPart `json:"more_parts,omitempty"`
}

// NumParts is the number of parts recorded for the hold.
func (h *Hold) NumParts() int {
	switch {
	case !h.HasParts:
		return 0
	case h.MoreParts == nil:
		return 1
	}
	return 1 + len(*h.MoreParts)
}

// Part returns part i (0 ≤ i < NumParts).
func (h *Hold) Part(i int) HoldPart {
	if i > 0 {
		return (*h.MoreParts)[i-1]
	}
	m := h.HoldMicros
	if h.MoreParts != nil {
		for _, p := range *h.MoreParts {
			m -= p.Micros
		}
	}
	return HoldPart{Grant: h.FirstGrant, Micros: m}
}

// addPart records the next part (the first part's micros are implied, see FirstGrant).
func (h *Hold) addPart(grant UUID, micros int64) {
	if !h.HasParts {
		h.HasParts, h.FirstGrant = true, grant
		return
	}
	if h.MoreParts == nil {
		h.MoreParts = new([]HoldPart)
	}
	*h.MoreParts = append(*h.MoreParts, HoldPart{Grant: grant, Micros: micros})
}

// Parked is a finish that arrived before its start.
type Parked struct {
	RequestID  string `json:"request_id"`
	ProjectID  string `json:"project_id,omitempty"` // as Hold.ProjectID
	EventID    string `json:"event_id"`
	Endpoint   string `json:"endpoint"`
	Status     string `json:"status"`
	CostMicros int64  `json:"cost_micros"`
	AtNs       int64  `json:"at_ns"`
}

// Window is the usage of one allowance window (index = the tier's window index).
type Window struct {
	StartMs    int64 `json:"start_ms"`
	UsedMicros int64 `json:"used_micros"`
}

// Account is one customer's folded state. It is exported whole (with JSON tags) because it
// is also the persisted state record.
type Account struct {
	ID        string `json:"id"`
	Tier      string `json:"tier,omitempty"` // "" = the book's default tier
	Priority  string `json:"priority,omitempty"`
	Suspended bool   `json:"suspended,omitempty"`
	// Unexported flags sit beside Suspended, in its padding (Account is about 350 bytes; the
	// memory bound per account is 1 KiB).
	legacy   bool // decoded from a version-1 record: Dedupe times are set at the first fold
	replaced bool // replaced by a restore: its expiry entries are stale
	// Offset is the events-topic offset of the last event folded for this account (-1 none).
	Offset int64 `json:"offset"`

	AvailableMicros int64 `json:"available"`
	HeldMicros      int64 `json:"held"`
	OverageMicros   int64 `json:"overage"`
	// Extra is the unexpiring part of available (the pool): positive adjustments, grants
	// beyond GrantsPerAccountMax, and releases of holds that recorded no parts.
	// Available = Σ grant remaining + Extra.
	ExtraMicros int64 `json:"extra"`

	// Running totals for the invariant available = granted − charged − held − breakage + adjusted.
	GrantedMicros  int64 `json:"granted"`
	ChargedMicros  int64 `json:"charged"` // paid charges (overage excluded)
	BreakageMicros int64 `json:"breakage"`
	AdjustedMicros int64 `json:"adjusted"` // net adjustments applied to available

	Grants []Grant  `json:"grants,omitempty"`
	Holds  []Hold   `json:"holds,omitempty"`
	Parked []Parked `json:"parked,omitempty"`
	// Windows is nil until the account first uses an allowance (most accounts never do):
	// nil reads as four zero windows.
	Windows *[4]Window `json:"windows"`
	// Dedupe remembers the ids applied within the dedupe window (see Dedupe).
	Dedupe Dedupe `json:"dedupe"`
	// Billing is the subscription, period usage and settings (nil: none, never charged).
	Billing *Billing `json:"billing,omitempty"`
	// FundingAccountID is the account whose balance funds this account's requests (set by
	// account.updated funding_account_id; "" its own). The fold of this account only
	// publishes it: the funded requests are folded on the funding account.
	FundingAccountID string `json:"funding_account_id,omitempty"`
	// Budgets are the monthly budgets of the projects this account funds, in project id
	// order, at most events.MaxProjectBudgets.
	Budgets []Budget `json:"budgets,omitempty"`

	// History.
	HistWindowNs    int64 `json:"hw"`
	ReqsCur         int32 `json:"rc"`
	RejsCur         int32 `json:"jc"`
	ReqsPrev        int32 `json:"rp"`
	RejsPrev        int32 `json:"jp"`
	SettledOK       int64 `json:"ok"`
	PenaltyPermille int32 `json:"pen"`
	FlagNs          int64 `json:"fl"`
	BlockedUntilNs  int64 `json:"bu"`
	Factor          int32 `json:"factor"` // last history factor published (0 value means 1000 until set)
	FactorSet       bool  `json:"fs"`

	touched uint64 // the Output generation that last listed this account in Touched
	pruneNs int64  // when the scheduled prune of Dedupe is due (0 = none scheduled)
}

// windowsMax is the most allowance windows an account tracks (the length of Windows).
const windowsMax = 4

// window returns allowance window i (zero when Windows is nil).
func (a *Account) window(i int) Window {
	if a.Windows == nil {
		return Window{}
	}
	return a.Windows[i]
}

// HistoryFactor returns the last history factor (1000 before any was published).
func (a *Account) HistoryFactor() int32 {
	if !a.FactorSet {
		return 1000
	}
	return a.Factor
}

// Entry is one journal line. Its event id is events.DerivedID(Cause, LedgerAccount) and its
// transaction id events.DerivedID(Cause, "tx"): computed when the line is published, so the
// fold's hot path does not allocate. Within one transaction each ledger account appears at
// most once.
type Entry struct {
	Cause         string
	AccountID     string
	LedgerAccount string
	AmountMicros  int64
	Kind          string
	RequestID     string
	// ProjectID is the project of a funded request's line (AccountID is then the funding
	// account): every line a funded request causes carries it, so that two projects' lines of
	// one request id are told apart. "" on the lines of the account's own requests and on
	// lines that are no request's (their published form then has no project_id key).
	ProjectID string
	GrantID   string
	At        time.Time
}

// Event returns the journal line as an events.LedgerEntry.
func (e *Entry) Event() events.LedgerEntry { return e.EventInTx(TransactionID(e.Cause)) }

// EventInTx is Event with the transaction id already computed (lines of one cause share it).
func (e *Entry) EventInTx(txID string) events.LedgerEntry {
	return events.LedgerEntry{
		EntryID: events.DerivedID(e.Cause, e.LedgerAccount), TransactionID: txID,
		AccountID: e.AccountID, LedgerAccount: e.LedgerAccount, AmountMicros: e.AmountMicros, Kind: e.Kind,
		CauseEventID: e.Cause, RequestID: e.RequestID, ProjectID: e.ProjectID, GrantID: e.GrantID, EffectiveAt: e.At.UTC(),
	}
}

// TransactionID is the transaction id of the lines caused by cause.
func TransactionID(cause string) string { return events.DerivedID(cause, "tx") }

// Expired is one request.expired output with its deterministic event id.
type Expired struct {
	ID   string
	Data events.RequestExpired
}

// Anomaly kinds: recorded, counted and logged, never fatal.
const (
	AnomalyUnknownFinish  = "unknown_finish"  // a finish whose start never came (park timeout or park full)
	AnomalyLateFinish     = "late_finish"     // a finish after its hold expired: charged late
	AnomalyDuplicate      = "duplicate"       // an event or business id already applied
	AnomalyUnexpectedType = "unexpected_type" // an output type on the events topic
	AnomalyHoldShort      = "hold_short"      // a hold larger than the available balance
	AnomalyTooManyHolds   = "too_many_holds"
	// AnomalyTooLate is an input event whose event time is before the account's dedupe
	// horizon (the watermark minus the dedupe window, or the account's dedupe floor): it
	// cannot be proven new, so it is not applied. The engine dead-letters it with the reason.
	AnomalyTooLate = "too_late"
	// AnomalyFutureTime is an input event whose event time is more than FutureSkewNsMax
	// after its Kafka record timestamp: it is not applied and does not advance the clock.
	// The engine dead-letters it with the reason.
	AnomalyFutureTime = "future_time"
	// AnomalyOverflow is a grant, adjustment or finish that would overflow one of the account's int64
	// balances or running totals (each amount is bounded by events.MaxAmountMicros, but
	// their sums are not): it is not applied, and the engine dead-letters it with the reason.
	AnomalyOverflow = "overflow"
	// AnomalyTooManyBudgets is a budget.changed that would give its account more than
	// events.MaxProjectBudgets project budgets: it is not applied, and the engine
	// dead-letters it with the reason.
	AnomalyTooManyBudgets = "too_many_budgets"
)

// Anomaly is one flagged oddity.
type Anomaly struct {
	Kind      string
	AccountID string
	EventID   string
	RequestID string
	// ProjectID is the project of a funded request (AccountID is then the funding account
	// whose state it was folded in); "" for the account's own.
	ProjectID string
	// For AnomalyTooLate, AnomalyFutureTime and AnomalyOverflow: the input's offset. HorizonNs is, for
	// AnomalyTooLate, the horizon its event time was before (the event is applied only if its
	// time is at or after it) and, for AnomalyFutureTime, the latest event time its record
	// timestamp allowed.
	Offset    int64
	HorizonNs int64
}

// Output collects what folding produced. The caller resets it between batches; slices keep
// their capacity so the steady state does not allocate.
type Output struct {
	Entries   []Entry
	Expired   []Expired
	Limits    []events.LimitsAdjusted
	Anomalies []Anomaly
	// Notices are the notifications and top-up requests, for the notifications topic.
	Notices []Notice
	// Touched lists the accounts changed since the last Reset, once each, in first-touch
	// order; publish their balance.updated from State.Balance.
	Touched []*Account
	// Evicted counts the dedupe entries evicted by the per-account bound (not the ones
	// that aged out of the window).
	Evicted int
	gen     uint64
}

// touchGen hands out Output generations. It is process-wide so that two Outputs used in
// turn on one State (the engine pipelines two batches) never share a generation.
var touchGen atomic.Uint64

// Reset empties the output, keeping capacity.
func (o *Output) Reset() {
	o.Entries, o.Expired, o.Limits, o.Anomalies = o.Entries[:0], o.Expired[:0], o.Limits[:0], o.Anomalies[:0]
	clear(o.Notices)
	o.Notices = o.Notices[:0]
	clear(o.Touched)
	o.Touched = o.Touched[:0]
	o.gen, o.Evicted = 0, 0
}

func (o *Output) touch(a *Account) {
	if o.gen == 0 {
		o.gen = touchGen.Add(1)
	}
	if a.touched != o.gen {
		a.touched = o.gen
		o.Touched = append(o.Touched, a)
	}
}
