package fold

import (
	"encoding/json"
	"fmt"
	"math/bits"
)

// Dedupe is an account's memory of the ids it has applied, each with the log time (the
// partition watermark) at which it was remembered. Keys are 64-bit FNV-1a hashes of an id,
// salted by the id's kind (request, grant, adjustment, event), so ids of different kinds
// never match.
//
// What is remembered, and when:
//   - a request id when its hold is settled (or its finish is charged as unknown or late),
//     with the low bit set when its hold expired unused; open holds and parked finishes are
//     found in Account.Holds and Account.Parked;
//   - a grant id when the grant leaves Account.Grants (expiry, breakage at once, or the
//     grant went to the pool);
//   - an adjustment id when it is applied;
//   - the event id of every other input event (request.rejected, account.updated,
//     abuse.flagged, and a request.started that placed no hold).
//
// An entry is kept while its time is at or after the horizon, watermark −
// Config.DedupeWindowNs. Entries are added in watermark order, so the memory is a FIFO: the
// oldest is at the head. Because an entry's time is never before the event time of any event
// it covers, a copy of an applied event whose event time is at or after the horizon always
// finds its entry; a copy older than the horizon is refused as too late (AnomalyTooLate).
//
// The memory holds at most Config.DedupePerAccountMax entries. Beyond it the oldest is
// evicted, and FloorNs records the latest time forgotten: an event of this account whose event
// time is at or before FloorNs cannot be proven new and is refused as too late too. So the
// fold never applies an event twice, whatever the bound; the bound only decides how old an
// event may be and still be accepted.
type Dedupe struct {
	ring []dedupeEntry // FIFO ring; len is its capacity (see dedupeGrow), nil when empty
	head uint32
	n    uint32
	idx  []uint32 // open-addressing index (ring slot + 1; 0 = free) when len(ring) > dedupeLinearMax
	// FloorNs is the latest log time of an entry that was forgotten (evicted or pruned): ids
	// remembered at or before it may be gone.
	FloorNs int64
}

type dedupeEntry struct {
	key  uint64
	atNs int64
}

// dedupeGrow is the ring capacity after one of n: 2, 4, 8, then two entries (32 bytes, the step
// of Go's size classes) at a time up to 32 entries (512 bytes), then a quarter more. A ring
// is thus at most two entries or a quarter larger than its ids, not up to twice as with
// doubling; the extra resizes of a small ring copy at most 512 bytes each.
func dedupeGrow(n int) int {
	switch {
	case n < 2:
		return 2
	case n < 8:
		return 2 * n
	case n < dedupeLinearMax:
		return n + 2
	default:
		return n + n/4
	}
}

// wrap maps a position past the ring's end (at most twice its length) back into it.
func (d *Dedupe) wrap(i uint32) uint32 {
	if i >= uint32(len(d.ring)) {
		i -= uint32(len(d.ring))
	}
	return i
}

// segments returns the entries oldest first as at most two contiguous runs.
func (d *Dedupe) segments() (first, second []dedupeEntry) {
	end := d.head + d.n
	if end <= uint32(len(d.ring)) {
		return d.ring[d.head:end], nil
	}
	return d.ring[d.head:], d.ring[:end-uint32(len(d.ring))]
}

// dedupeLinearMax is the ring capacity up to which lookups scan the ring instead of using
// the index (a scan of 32 entries is faster than hashing into a table).
const dedupeLinearMax = 32

// Salts of the key kinds. Their low bit is 0: the request kind uses it to mark an expired
// hold.
const (
	saltRequest uint64 = 0
	saltNoHold  uint64 = 0x2545f4914f6cdd1c // a request.started that placed no hold
	saltGrant   uint64 = 0x9e3779b97f4a7c14
	saltAdjust  uint64 = 0xbf58476d1ce4e5b8
	saltEvent   uint64 = 0x94d049bb133111ea
)

// Len is the number of remembered ids.
func (d *Dedupe) Len() int { return int(d.n) }

// At returns the i-th oldest entry: its key and the log time it was remembered at.
func (d *Dedupe) At(i int) (key uint64, atNs int64) {
	e := d.ring[d.wrap(d.head+uint32(i))]
	return e.key, e.atNs
}

// Append adds an entry at the tail. atNs must not be before the tail's time. It is for
// building records (decoding, tests); the fold remembers ids through State.
func (d *Dedupe) Append(key uint64, atNs int64) { d.appendCapped(key, atNs, 1<<31) }

// appendCapped is Append with the ring grown to at most capMax entries (the fold passes
// Config.DedupePerAccountMax, having evicted down to fewer ids than that).
func (d *Dedupe) appendCapped(key uint64, atNs int64, capMax int) {
	if d.n == uint32(len(d.ring)) {
		d.resize(max(min(dedupeGrow(len(d.ring)), capMax), int(d.n)+1))
	}
	slot := d.wrap(d.head + d.n)
	d.ring[slot] = dedupeEntry{key, atNs}
	d.n++
	if d.idx != nil {
		d.idxInsert(slot)
	}
}

func (d *Dedupe) headAt() int64 { return d.ring[d.head].atNs }

// popHead forgets the oldest entry and raises FloorNs to its time.
func (d *Dedupe) popHead() {
	if d.idx != nil {
		d.idxDelete(d.head)
	}
	e := d.ring[d.head]
	d.ring[d.head] = dedupeEntry{}
	d.head = d.wrap(d.head + 1)
	d.n--
	d.FloorNs = max(d.FloorNs, e.atNs)
}

// prune forgets the entries older than cutoff and returns how many. The ring shrinks when
// it is mostly empty, and is released when empty (an idle account costs no ring).
func (d *Dedupe) prune(cutoffNs int64) int {
	k := 0
	for d.n > 0 && d.ring[d.head].atNs < cutoffNs {
		d.popHead()
		k++
	}
	if k > 0 {
		switch {
		case d.n == 0:
			d.ring, d.idx, d.head = nil, nil, 0
		case len(d.ring) > 8 && int(d.n) < len(d.ring)/4:
			d.resize(len(d.ring) / 2)
		}
	}
	return k
}

func (d *Dedupe) resize(capacity int) {
	ring := make([]dedupeEntry, capacity)
	for i := uint32(0); i < d.n; i++ {
		ring[i] = d.ring[d.wrap(d.head+i)]
	}
	d.ring, d.head, d.idx = ring, 0, nil
	if capacity > dedupeLinearMax {
		// A power of two at least twice the capacity: load at most one half.
		d.idx = make([]uint32, 1<<bits.Len(uint(2*capacity-1)))
		for i := uint32(0); i < d.n; i++ {
			d.idxInsert(i)
		}
	}
}

// has reports whether key is remembered.
func (d *Dedupe) has(key uint64) bool {
	_, ok := d.lookup(key)
	return ok
}

// lookup returns the latest time key was remembered at.
func (d *Dedupe) lookup(key uint64) (atNs int64, ok bool) {
	if d.idx != nil {
		return d.idxFind(key)
	}
	first, second := d.segments()
	for _, seg := range [2][]dedupeEntry{first, second} {
		for i := range seg {
			if seg[i].key == key {
				atNs, ok = seg[i].atNs, true // later entries are later in time
			}
		}
	}
	return atNs, ok
}

// lookupRequest finds the request id hashed rh (low bit 0) in any state: settled (rh),
// expired (rh|1) or started without a hold (rh^saltNoHold). It returns the key found
// latest and its time.
func (d *Dedupe) lookupRequest(rh uint64) (key uint64, atNs int64, ok bool) {
	if d.idx != nil {
		for _, k := range [3]uint64{rh, rh | 1, rh ^ saltNoHold} {
			if at, found := d.idxFind(k); found && (!ok || at >= atNs) {
				key, atNs, ok = k, at, true
			}
		}
		return key, atNs, ok
	}
	nh := rh ^ saltNoHold
	first, second := d.segments()
	for _, seg := range [2][]dedupeEntry{first, second} {
		for i := range seg {
			if e := &seg[i]; e.key&^1 == rh || e.key == nh {
				key, atNs, ok = e.key, e.atNs, true
			}
		}
	}
	return key, atNs, ok
}

func (d *Dedupe) idxPos(key uint64) uint32 {
	return uint32((key * 0x9e3779b97f4a7c15) >> (64 - bits.TrailingZeros(uint(len(d.idx)))))
}

// idxFind returns the latest time of key (a key may be remembered more than once).
func (d *Dedupe) idxFind(key uint64) (atNs int64, ok bool) {
	mask := uint32(len(d.idx) - 1)
	for i := d.idxPos(key); ; i = (i + 1) & mask {
		v := d.idx[i]
		if v == 0 {
			return atNs, ok
		}
		if e := &d.ring[v-1]; e.key == key && (!ok || e.atNs > atNs) {
			atNs, ok = e.atNs, true
		}
	}
}

func (d *Dedupe) idxInsert(slot uint32) {
	mask := uint32(len(d.idx) - 1)
	i := d.idxPos(d.ring[slot].key)
	for d.idx[i] != 0 {
		i = (i + 1) & mask
	}
	d.idx[i] = slot + 1
}

// idxDelete removes slot from the index (linear probing, backward-shift deletion).
func (d *Dedupe) idxDelete(slot uint32) {
	mask := uint32(len(d.idx) - 1)
	i := d.idxPos(d.ring[slot].key)
	for d.idx[i] != slot+1 {
		i = (i + 1) & mask
	}
	for j := (i + 1) & mask; d.idx[j] != 0; j = (j + 1) & mask {
		k := d.idxPos(d.ring[d.idx[j]-1].key)
		// The entry at j may move to i unless its home k lies cyclically in (i, j].
		if (i < j && i < k && k <= j) || (i > j && (k > i || k <= j)) {
			continue
		}
		d.idx[i] = d.idx[j]
		i = j
	}
	d.idx[i] = 0
}

// check reports a broken structure: times out of order, an index that misses an entry.
func (d *Dedupe) check() error {
	if d.n > uint32(len(d.ring)) {
		return fmt.Errorf("dedupe: %d entries in a ring of %d", d.n, len(d.ring))
	}
	prev := int64(-1 << 63)
	for i := 0; i < d.Len(); i++ {
		k, at := d.At(i)
		if at < prev {
			return fmt.Errorf("dedupe: entry %d at %d before its predecessor at %d", i, at, prev)
		}
		prev = at
		if !d.has(k) {
			return fmt.Errorf("dedupe: entry %d (%x) not found", i, k)
		}
	}
	if d.idx != nil {
		used := 0
		for _, v := range d.idx {
			if v != 0 {
				used++
			}
		}
		if used != d.Len() {
			return fmt.Errorf("dedupe: index holds %d slots for %d entries", used, d.n)
		}
	}
	return nil
}

type dedupeJSON struct {
	FloorNs int64      `json:"floor_ns"`
	Entries [][2]int64 `json:"entries"` // [key as int64 bits, at_ns], oldest first
}

// MarshalJSON writes the entries oldest first.
func (d Dedupe) MarshalJSON() ([]byte, error) {
	j := dedupeJSON{FloorNs: d.FloorNs, Entries: make([][2]int64, 0, d.n)}
	for i := 0; i < d.Len(); i++ {
		k, at := d.At(i)
		j.Entries = append(j.Entries, [2]int64{int64(k), at})
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (d *Dedupe) UnmarshalJSON(b []byte) error {
	var j dedupeJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*d = Dedupe{FloorNs: j.FloorNs}
	for i, e := range j.Entries {
		if i > 0 && e[1] < j.Entries[i-1][1] {
			return fmt.Errorf("dedupe: entry %d out of time order", i)
		}
		d.Append(uint64(e[0]), e[1])
	}
	return nil
}

// hashID is FNV-1a 64 with the low bit cleared (the rings use it as a flag).
func hashID(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h &^ 1
}

// cutoff is the dedupe horizon of the partition: ids remembered before it are forgotten.
func (s *State) cutoff() int64 {
	c := s.watermark - s.cfg.DedupeWindowNs
	if c > s.watermark {
		return -1 << 63
	}
	return c
}

// prune forgets a's ids remembered before the horizon.
func (s *State) prune(a *Account) {
	if d := &a.Dedupe; d.n > 0 && d.headAt() < s.cutoff() {
		s.dedupeN -= d.prune(s.cutoff())
	}
}

// seen reports whether key is remembered by a. A copy found with an event time (t) later
// than the time its id was remembered at renews the id at the watermark: an id must be
// remembered at least as long as every event it stopped (a re-send with a new event id and a
// later time would otherwise outlive the id that stopped it).
func (s *State) seen(a *Account, key uint64, t int64, out *Output) bool {
	s.prune(a)
	at, ok := a.Dedupe.lookup(key)
	if ok && at < t {
		s.remember(a, key, out)
	}
	return ok
}

// seenRequest reports whether the request hashed rh was settled, expired or refused a hold
// (renewed as seen does).
func (s *State) seenRequest(a *Account, rh uint64, t int64, out *Output) bool {
	s.prune(a)
	k, at, ok := a.Dedupe.lookupRequest(rh)
	if ok && at < t {
		s.remember(a, k, out)
	}
	return ok
}

// remember adds key to a's memory at the watermark. Beyond the per-account bound the oldest
// ids are evicted: counted, and the account's dedupe floor rises to their time.
func (s *State) remember(a *Account, key uint64, out *Output) {
	d := &a.Dedupe
	s.prune(a)
	for d.n > 0 && d.n >= uint32(s.cfg.DedupePerAccountMax) {
		d.popHead()
		s.dedupeN--
		out.Evicted++
	}
	at := s.watermark
	if d.n > 0 {
		// A restore can rewind the clock below ids persisted by a batch whose partition record
		// was not written; keep the memory in time order.
		_, tail := d.At(d.Len() - 1)
		at = max(at, tail)
	}
	d.appendCapped(key, at, s.cfg.DedupePerAccountMax)
	s.dedupeN++
	if a.pruneNs == 0 {
		s.schedulePrune(a)
	}
}

// schedulePrune schedules the pruning of a's memory one window after its oldest id is
// forgotten. Accounts in use are pruned as they are folded; this bounds the memory of idle
// ones, whose rings are released when empty.
func (s *State) schedulePrune(a *Account) {
	if a.Dedupe.n == 0 {
		return
	}
	at := a.Dedupe.headAt() + 2*s.cfg.DedupeWindowNs
	if at < a.Dedupe.headAt() {
		at = 1<<63 - 1
	}
	if at == 0 {
		at = 1
	}
	a.pruneNs = at
	s.schedule(expiry{atNs: at, acct: a, kind: expDedupe})
}

// stampLegacy sets the dedupe times of accounts restored from version-1 records (which
// carried no times) to the watermark: from now on they are kept for a full window.
func (s *State) stampLegacy() {
	for _, a := range s.legacy {
		if a.replaced || !a.legacy {
			continue
		}
		a.legacy = false
		d := &a.Dedupe
		first, second := d.segments()
		for _, seg := range [2][]dedupeEntry{first, second} {
			for i := range seg {
				seg[i].atNs = s.watermark
			}
		}
		s.schedulePrune(a)
	}
	s.legacy = nil
}

// DedupeEntries is the number of ids remembered over all accounts of the partition.
func (s *State) DedupeEntries() int { return s.dedupeN }
