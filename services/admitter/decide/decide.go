// Package decide is the admitter's pure decision core: the account state table, the decision
// order (blocked, overload shedding, concurrency, rate limit, budget, funding waterfall), the
// local balance (the ledger's view minus this admitter's unfolded holds and settlements), the
// funding of accounts by others (an organization's shared balance and its project budgets)
// and the local adaptive concurrency limit. It imports no Kafka or HTTP; time is always a parameter.
//
// A Table is not safe for concurrent use: the service serialises calls with one mutex. Every
// decision runs in well under a microsecond and allocates nothing once the account is known.
package decide

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/tallyhq/tally/shared/bounds"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/pricebook"
)

// Bounds of the table layout.
const (
	// EndpointsMax bounds the endpoints of a price book the table can hold.
	EndpointsMax = 16
	// WindowsMax is the most allowance windows per tier (the price book allows 4).
	WindowsMax = 4
	// factorUnset marks an account without a history factor (never adjusted: clean).
	factorUnset = 0xFFFF
	// none is the nil index of the slabs' linked lists.
	none = ^uint32(0)
)

// Reason says why a request was denied. The zero value means allowed.
type Reason uint8

// Denial reasons, in decision order. Their strings are the API's stable reason codes.
const (
	ReasonNone Reason = iota
	ReasonSuspended
	ReasonBlocked
	ReasonOverloaded
	ReasonConcurrency
	ReasonRateLimited
	ReasonBudgetExhausted
	ReasonInsufficientCredits
	ReasonTableFull
	numReasons
)

var reasonNames = [numReasons]string{"", "account_suspended", "account_blocked", "overloaded",
	"concurrency_limited", "rate_limited", "budget_exhausted", "insufficient_credits", "account_table_full"}

// String is the stable reason code ("" for allowed).
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Reasons lists every denial reason code.
func Reasons() []string { return append([]string(nil), reasonNames[1:]...) }

// Funding sources.
type Funding uint8

// Funding values; their strings are events.FundingAllowance, events.FundingCredits and
// events.FundingSplit (allowance and credits at once).
const (
	FundingNone Funding = iota
	FundingAllowance
	FundingCredits
	FundingSplit
)

func (f Funding) String() string {
	switch f {
	case FundingAllowance:
		return events.FundingAllowance
	case FundingCredits:
		return events.FundingCredits
	case FundingSplit:
		return events.FundingSplit
	}
	return ""
}

// ParseFunding maps an event's funding name to a Funding (FundingNone when unknown).
func ParseFunding(s string) Funding {
	switch s {
	case events.FundingAllowance:
		return FundingAllowance
	case events.FundingCredits:
		return FundingCredits
	case events.FundingSplit:
		return FundingSplit
	}
	return FundingNone
}

// fundingOf names the sources of a reservation: both, one, or (nothing reserved) the
// allowance when the tier has windows, else credits.
func fundingOf(allow, hold int64, windows int) Funding {
	switch {
	case allow > 0 && hold > 0:
		return FundingSplit
	case hold > 0:
		return FundingCredits
	case allow > 0 || windows > 0:
		return FundingAllowance
	}
	return FundingCredits
}

// Priority classes, highest first.
type Priority uint8

const (
	PriorityCritical Priority = iota
	PriorityStandard
	PriorityBatch
	numPriorities
)

var priorityNames = [numPriorities]string{events.PriorityCritical, events.PriorityStandard, events.PriorityBatch}

func (p Priority) String() string {
	if p < numPriorities {
		return priorityNames[p]
	}
	return ""
}

// ParsePriority maps a class name to a Priority; an unknown or empty name reports ok=false.
func ParsePriority(s string) (Priority, bool) {
	switch s {
	case events.PriorityCritical:
		return PriorityCritical, true
	case events.PriorityStandard:
		return PriorityStandard, true
	case events.PriorityBatch:
		return PriorityBatch, true
	}
	return PriorityStandard, false
}

// Config holds the core's policy settings. Every field is a documented bound.
type Config struct {
	// AccountsMax bounds the account table (memory ≈ 250 bytes per account).
	AccountsMax int
	// OpenMax bounds the requests open at once (admitted, not finished nor expired).
	OpenMax int
	// PendingMax bounds the local balance changes waiting for the ledger to fold them.
	PendingMax int
	// Instances divides the rate and concurrency limits between N admitters (each enforces
	// ceil(limit/N)); 1 = a single admitter.
	Instances int64
	// CleanBurstBonusPermille multiplies the burst of accounts with a clean history (no
	// history factor below 1000); 1000 = no bonus.
	CleanBurstBonusPermille int64
	// BatchSharePermille is the share of the non-reserved capacity batch traffic may use
	// before it is shed (standard may use all of it, critical also the reserve).
	BatchSharePermille int64
	// AccountSharePermille is the most of an endpoint's current capacity one account may
	// hold in flight (at least 1), whatever its tier allows, so that one client's open
	// requests cannot take the endpoint from everyone else. Default 100, range [1, 1000].
	AccountSharePermille int64
	// RetryBlockedMs, RetryOverloadedMs, RetryConcurrencyMs and RetryInsufficientMs are the
	// retry_after_ms of those denials when no exact time is known.
	RetryBlockedMs      int64
	RetryOverloadedMs   int64
	RetryConcurrencyMs  int64
	RetryInsufficientMs int64
	// OverageFromAvailable: at finish, a cost above what the allowance and the hold cover is
	// charged from the available balance before the rest becomes overage (true), or all of it
	// becomes overage (false).
	OverageFromAvailable bool
	// Adaptive configures the local adaptive concurrency limit per endpoint.
	Adaptive AdaptiveConfig
	// HugePages asks the kernel (Linux madvise MADV_HUGEPAGE) to back the account slab and
	// its index with 2 MiB transparent huge pages: decisions read them at random, and with
	// 4 KiB pages each read also pays a TLB miss. Default true; no effect where THP is off.
	HugePages bool
}

// DefaultConfig is the documented default policy.
var DefaultConfig = Config{
	AccountsMax: 2_000_000, OpenMax: 1_000_000, PendingMax: 2_000_000, Instances: 1,
	CleanBurstBonusPermille: 1500, BatchSharePermille: 750, AccountSharePermille: 100,
	RetryBlockedMs: 3_600_000, RetryOverloadedMs: 1000, RetryConcurrencyMs: 1000, RetryInsufficientMs: 60_000,
	OverageFromAvailable: true, Adaptive: DefaultAdaptiveConfig, HugePages: true,
}

const retryMsMax = 7 * 24 * 3600 * 1000

// Validate reports every out-of-range setting, joined.
func (c Config) Validate() error {
	var errs []error
	rng := bounds.Into[int64](&errs, "")
	rng("AccountsMax", int64(c.AccountsMax), 1, 1<<31)
	rng("OpenMax", int64(c.OpenMax), 1, 1<<30)
	rng("PendingMax", int64(c.PendingMax), 1, 1<<31)
	rng("Instances", c.Instances, 1, 1000)
	rng("CleanBurstBonusPermille", c.CleanBurstBonusPermille, 1000, 10_000)
	rng("BatchSharePermille", c.BatchSharePermille, 0, 1000)
	rng("AccountSharePermille", c.AccountSharePermille, 1, 1000)
	rng("RetryBlockedMs", c.RetryBlockedMs, 1, retryMsMax)
	rng("RetryOverloadedMs", c.RetryOverloadedMs, 1, retryMsMax)
	rng("RetryConcurrencyMs", c.RetryConcurrencyMs, 1, retryMsMax)
	rng("RetryInsufficientMs", c.RetryInsufficientMs, 1, retryMsMax)
	if err := c.Adaptive.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("Adaptive: %w", err))
	}
	return errors.Join(errs...)
}

// inlineEndpoints is how many endpoints' GCRA and in-flight state live inside the account
// record (the rest in Table.eps), so that a decision usually touches adjacent cache lines.
const inlineEndpoints = 2

// account is one cached account: the ledger's last view plus the local pending deltas. It is
// 192 bytes, three cache lines (the slab is a large allocation, so records are line aligned),
// with no pointers: the garbage collector never scans the slab. Line 1 holds the id (compared
// by the index lookup), the class and the ledger's balance; line 2 the pending sums and the
// inline endpoints' GCRA and in-flight state; line 3 the allowance windows. A decision reads
// all three, as independent loads once the index is known.
type account struct {
	key             [keyInline]byte // the id's bytes when keyLen <= keyInline
	keyLen          uint8           // len(id), or keyLong (the id is in Table.longIDs)
	tier            uint8
	priority        Priority
	suspended       bool
	factorPermille  uint16 // history factor, factorUnset when never adjusted
	expiring        bool   // Table.expiring holds the ledger's expiring grants of this account
	project         bool   // Table.projects holds this account's funding, budget or reservations
	pendingHead     uint32 // first pending change, or none
	foldedPartition int32
	availableMicros int64 // ledger's available balance
	pendingAvail    int64 // sum of unfolded local deltas to available (holds are negative)
	pendingAllow    int64 // sum of unfolded local allowance usage
	ep              [inlineEndpoints]epState
	foldedOffset    int64 // events-topic offset of the last event the ledger folded (-1 none)
	heldMicros      int64 // ledger's held balance
	winStartMs      [WindowsMax]int64
	winUsedMicros   [WindowsMax]int64
}

// expiringSlots is how many of balance.updated's Expiring entries the table keeps per
// account: the first entry, and the rest merged into the second at its (earlier) expiry.
const expiringSlots = 2

// expiringGrants is an account's balance.updated Expiring, compacted to 24 bytes:
// remainders (micros, 0 = unused slot) that stop counting at atSec, the expiry in Unix
// seconds rounded down and capped at 2106 (uint32): both only ever move a cutoff earlier.
type expiringGrants struct {
	atSec  [expiringSlots]uint32
	micros [expiringSlots]int64
}

// project is what an account funded by another (a project of an organization) needs beyond
// its record, kept in Table.projects for those accounts only: its funding account, the
// monthly budget its funding account's balance.updated lists for it, and the estimates of its
// open funded requests (this admitter's and its peers'), which count against the budget.
type project struct {
	funder uint32 // the funding account (from the project's balance.updated), or none
	// funderLost: the project's balance.updated names a funding account the full table could
	// not take; it is denied (table_full) until a view's funder fits, never served on its
	// own balance or a former funder's.
	funderLost bool
	budgetOf   uint32 // the funding account whose balance.updated lists the budget, or none
	// budgetMicros per UTC calendar month; spentMicros what the project's finished requests
	// cost in the month starting at periodStartMs (Unix ms), as the ledger last published.
	budgetMicros, spentMicros, periodStartMs int64
	// reservedMicros is the sum of the estimates of its open funded requests;
	// settledMicros the sum of Table.settling's entries of it.
	reservedMicros, settledMicros int64
}

// settlingMax bounds Table.settling's entries per project: a further finished cost merges into
// the last entry (its sum, the later position), so it is counted until the view passes the
// later position: never less than each cost alone would be.
const settlingMax = 32

// settledCost is the cost of a finished funded request of a project with a budget, at the
// position of its request.finished on the funding account's partition: it counts against the
// budget until the funding account's balance.updated passes that position (then its spent
// includes it).
type settledCost struct {
	partition int32
	offset    int64
	micros    int64
}

// epState is one account's state on one endpoint: the GCRA theoretical arrival time and the
// in-flight count, side by side so that a decision touches one cache line for both.
type epState struct {
	tatUs    int64
	inflight int32
}

// pending is one local change to an account's balance the ledger has not folded yet.
type pending struct {
	account     uint32
	next        uint32 // next pending change of the same account, or none
	partition   int32  // -1 until the event is acknowledged
	offset      int64
	availMicros int64 // delta to available
	allowMicros int64 // delta to allowance usage
}

// open is one admitted request that has not finished nor expired.
type open struct {
	account      uint32
	endpoint     uint8
	funding      Funding
	priority     Priority
	holdMicros   int64
	allowMicros  int64
	startedMs    int64
	expiresAtMs  int64
	stepUs       int64 // the GCRA step taken, given back by Abort
	startPending uint32
	nextFree     uint32
	live         bool
	funder       uint32 // the account whose money the request takes: its funding account, or account
}

type tierInfo struct {
	name string
	t    pricebook.Tier
	// winStartMs/winEndMs cache each allowance window's current span, so that a decision
	// divides by the window length only when a window rolls over.
	winStartMs, winEndMs [WindowsMax]int64
}

// limits are effective limits precomputed for an (endpoint, class, tier) at history factor
// 1000 (no or a neutral history factor: the common case) with the clean burst bonus, so that
// a decision does not divide; recomputed when the endpoint's load factor changes.
type limits struct {
	conc, rate, burst, stepUs int64
}

type endpointInfo struct {
	name         string
	ep           *pricebook.Endpoint
	inflight     int64
	critInflight int64                // of which critical, against its reserve
	loadFactor   [numPriorities]int64 // permille
	adaptive     Adaptive
}

// Table is the admitter's state: accounts, open requests and pending balance changes.
type Table struct {
	cfg       Config
	book      *pricebook.Book
	tiers     []tierInfo
	tierIdx   map[string]uint8
	defTier   uint8
	endpoints []endpointInfo
	epIdx     map[string]uint8
	// lims[(endpoint×numPriorities+class)×len(tiers)+tier], see limits.
	lims []limits

	idx      index
	accounts []account
	longIDs  map[uint32]string // ids longer than keyInline, by account
	// expiring holds, for the accounts whose ledger view lists expiring grants (most have
	// none: the map costs nothing for them), when each remainder stops counting.
	expiring map[uint32]expiringGrants
	// projects holds, for the accounts that are funded by another, have a budget or have
	// funded requests open (account.project), their project state; the others cost nothing.
	projects map[uint32]project
	// settling holds, per project with a budget, the costs of its finished requests the
	// funding account's view has not folded yet (see settledCost).
	settling map[uint32][]settledCost
	// budgetsOf lists, per funding account, the projects its last balance.updated listed
	// budgets for (so that the next one can drop those it no longer lists).
	budgetsOf map[uint32][]uint32
	// funderIDs holds the ids of the accounts that fund others, for Decision.FundingAccountID
	// (written without allocating).
	funderIDs map[uint32]string
	// per account × endpoint beyond the inline ones (index account×(endpoints−2)+endpoint−2).
	eps []epState

	opens    blocks[open]
	openFree uint32
	openLive int

	pend     blocks[pending]
	pendFree uint32
	pendLive int

	sweep uint32 // Expire's cursor
}

// NewTable builds an empty table for a validated price book.
func NewTable(book *pricebook.Book, cfg Config) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("decide: config: %w", err)
	}
	if err := book.Validate(); err != nil {
		return nil, fmt.Errorf("decide: price book: %w", err)
	}
	if len(book.Endpoints) > EndpointsMax || len(book.Tiers) > 255 {
		return nil, fmt.Errorf("decide: at most %d endpoints and 255 tiers", EndpointsMax)
	}
	t := &Table{cfg: cfg, book: book, tierIdx: map[string]uint8{}, epIdx: map[string]uint8{},
		idx: newIndex(), openFree: none, pendFree: none, expiring: map[uint32]expiringGrants{},
		projects: map[uint32]project{}, settling: map[uint32][]settledCost{}, budgetsOf: map[uint32][]uint32{}, funderIDs: map[uint32]string{}}
	for _, name := range slices.Sorted(maps.Keys(book.Tiers)) {
		t.tierIdx[name] = uint8(len(t.tiers))
		t.tiers = append(t.tiers, tierInfo{name: name, t: book.Tiers[name]})
	}
	t.defTier = t.tierIdx[book.DefaultTier]
	for _, name := range slices.Sorted(maps.Keys(book.Endpoints)) {
		ep := book.Endpoints[name]
		t.epIdx[name] = uint8(len(t.endpoints))
		info := endpointInfo{name: name, ep: &ep, loadFactor: [numPriorities]int64{1000, 1000, 1000}}
		info.adaptive.init(cfg.Adaptive, ep.CapacityInflight)
		t.endpoints = append(t.endpoints, info)
	}
	t.lims = make([]limits, len(t.endpoints)*int(numPriorities)*len(t.tiers))
	for ei := range t.endpoints {
		for p := range numPriorities {
			t.computeLimits(uint8(ei), p)
		}
	}
	return t, nil
}

// computeLimits fills the limits of endpoint ei and class p for every tier.
func (t *Table) computeLimits(ei uint8, p Priority) {
	load := t.endpoints[ei].loadFactor[p]
	for ti := range t.tiers {
		tier := &t.tiers[ti].t
		l := &t.lims[(int(ei)*int(numPriorities)+int(p))*len(t.tiers)+ti]
		l.conc = t.scale(tier.ConcurrentMax, load, 1000, 1000)
		l.rate = t.scale(tier.RatePerMinute, load, 1000, 1000)
		l.burst = t.scale(tier.Burst, load, 1000, t.cfg.CleanBurstBonusPermille)
		l.stepUs = max(60_000_000/l.rate, 1)
	}
}

// Book is the price book the table was built with.
func (t *Table) Book() *pricebook.Book { return t.book }

// Accounts is the number of cached accounts.
func (t *Table) Accounts() int { return len(t.accounts) }

// OpenRequests is the number of open (admitted, unfinished) requests.
func (t *Table) OpenRequests() int { return t.openLive }

// PendingChanges is the number of local balance changes not yet folded by the ledger.
func (t *Table) PendingChanges() int { return t.pendLive }

// Endpoint reports whether name is a known endpoint.
func (t *Table) Endpoint(name string) bool { _, ok := t.epIdx[name]; return ok }

// epState returns account ai's state on endpoint ei.
func (t *Table) epState(ai uint32, ei uint8) *epState {
	if ei < inlineEndpoints {
		return &t.accounts[ai].ep[ei]
	}
	return &t.eps[int(ai)*(len(t.endpoints)-inlineEndpoints)+int(ei)-inlineEndpoints]
}

// lookup returns the account's index, inserting it when absent. ok is false when the table
// is full.
func (t *Table) lookup(id string) (uint32, bool) {
	i, slot, h, ok := t.find(id)
	if ok {
		return i, true
	}
	if len(t.accounts) >= t.cfg.AccountsMax {
		return 0, false
	}
	i = uint32(len(t.accounts))
	if len(t.accounts) == cap(t.accounts) {
		// Grown by hand (×1.25, like append) to advise the new slab before it is touched.
		n := make([]account, len(t.accounts), max(cap(t.accounts)*5/4, 64))
		if t.cfg.HugePages {
			adviseHuge(n)
		}
		copy(n, t.accounts)
		t.accounts = n
	}
	t.accounts = append(t.accounts, account{foldedOffset: -1, foldedPartition: -1, pendingHead: none,
		factorPermille: factorUnset, tier: t.defTier, priority: PriorityStandard,
		winStartMs: [WindowsMax]int64{-1, -1, -1, -1}})
	t.insert(id, i, slot, h)
	for range max(len(t.endpoints)-inlineEndpoints, 0) {
		t.eps = append(t.eps, epState{})
	}
	return i, true
}

// known returns the index of a cached account without inserting it.
func (t *Table) known(id string) (uint32, bool) {
	i, _, _, ok := t.find(id)
	return i, ok
}
