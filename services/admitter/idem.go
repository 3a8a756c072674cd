package admitter

import (
	"hash/maphash"

	"github.com/tallyhq/tally/services/admitter/api"
)

// The idempotency cache (request_id → the admit and finish answers) holds every open request
// plus the last ADMITTER_IDEMPOTENCY_MAX answered ids, i.e. hundreds of thousands of records
// at 20k admits/s. It is laid out for the garbage collector: each record is a pointer-free
// idemRec in one slice plus one pointer-free byte blob (the request's strings and the answer
// bodies) in a slot of blobArena's large chunks, the id → record index is open addressing
// over 8-byte slots like decide/index.go, the answered-id FIFO and the handle → record map
// are integer slices, and a channel exists only while somebody waits for a pending answer. A
// record thus costs the collector nothing to mark or scan, where a map of *entry with its
// strings, request copy, channel and 1 KiB answer buffer cost about ten objects, several of
// them scanned, per request (and one exact-size blob per record, before blobArena, still
// one object to mark per record).

// Blob segments, in order.
const (
	segID = iota
	segAccount
	segEndpoint
	segModel
	segPriority
	segResolution
	segKeyID
	segClient
	segBody // the admit answer (no trailing newline)
	segFinStatus
	segFinResolution
	segFinBody // the finish answer
	numSegs
)

// Finish states of a record.
const (
	finNone    uint8 = iota // not finished (or the last finish failed)
	finPending              // a finish is being published
	finDone                 // finished: the finish answer is in the blob
)

// idemRec is one request_id's record. It holds no pointers; its strings and bodies are in
// its blob (blobArena slot bslot of class bclass), segment i being blob[off[i]:off[i+1]].
type idemRec struct {
	hash uint64
	// gen is unique per record incarnation (a waiter that finds another generation after
	// waking knows the call it waited for failed); finSeq counts finish attempts likewise.
	gen    uint32
	finSeq uint32
	handle uint32 // the open request's handle in the decision table
	status uint16 // admit answer status; 0 while the admit is pending
	fin    uint8  // finNone, finPending, finDone
	flags  uint8
	bclass uint8
	bslot  uint32

	retryAfterMs int64 // of a 429 admit answer (Retry-After on replays)
	est          [4]int64
	finUsage     [4]int64
	finDuration  int64 // of the first finish (informative: not compared on repeats)
	off          [numSegs + 1]uint32
}

const (
	recAllowed uint8 = 1 << iota
	recOpen          // the request is open in the decision table under handle
	recFromLog       // created by a finish of a request admitted elsewhere: no admit answer to replay
)

// idemStore is the cache; Service.mu guards it.
type idemStore struct {
	seed  maphash.Seed
	slots []uint64 // hash tag (high 32 bits) | record index + 1; 0 = empty
	n     int
	recs  []idemRec
	arena blobArena
	free  []uint32
	gen   uint32

	// fifo is a ring of answered records (gen<<32 | index), oldest first.
	fifo     []uint64
	fifoHead int
	fifoLen  int

	// byHandle maps an open request's decision-table handle to its record index + 1.
	byHandle []uint32

	// waiters holds a channel per record that somebody waits on; it is closed at the
	// record's next change (wake).
	waiters map[uint32]chan struct{}
}

// idemPresizeMax bounds the records newIdemStore makes room for up front.
const idemPresizeMax = 1 << 20

// newIdemStore makes room up front for the max answered records it holds once full (up to
// idemPresizeMax): the index at its final size and the records' capacity, so that the store
// does not stop every admit to rehash or copy its records while it fills (each growth of a
// 100,000-record store was a pause of milliseconds under Service.mu, measured). At the
// default 200,000 that is 4 MiB of index and 34 MB of records (168 bytes each).
func newIdemStore(max int) *idemStore {
	n := min(max, idemPresizeMax)
	slots := 1024
	for slots*3 < n*4 {
		slots *= 2
	}
	return &idemStore{seed: maphash.MakeSeed(), slots: make([]uint64, slots), recs: make([]idemRec, 0, n),
		fifo: make([]uint64, max), arena: newBlobArena(), waiters: map[uint32]chan struct{}{}}
}

// seg returns segment i of record ri, valid while Service.mu is held: once the record's blob
// is replaced or the record removed, its slot is handed out again and overwritten, so a
// caller that uses it after unlocking copies it first (segCopy).
func (st *idemStore) seg(ri uint32, i int) []byte {
	r := &st.recs[ri]
	return st.arena.bytes(r.bclass, r.bslot)[r.off[i]:r.off[i+1]:r.off[i+1]]
}

// segCopy returns a copy of segment i of record ri, to use after unlocking.
func (st *idemStore) segCopy(ri uint32, i int) []byte {
	return append([]byte(nil), st.seg(ri, i)...)
}

func (st *idemStore) str(ri uint32, i int) string { return string(st.seg(ri, i)) }

// find returns the record of id, or ok=false and the slot where it would be inserted.
func (st *idemStore) find(id string) (ri uint32, slot uint64, h uint64, ok bool) {
	h = maphash.String(st.seed, id)
	mask := uint64(len(st.slots) - 1)
	tag := h >> 32
	for i := h & mask; ; i = (i + 1) & mask {
		e := st.slots[i]
		if e == 0 {
			return 0, i, h, false
		}
		if e>>32 == tag && string(st.seg(uint32(e)-1, segID)) == id {
			return uint32(e) - 1, i, h, true
		}
	}
}

func (st *idemStore) lookup(id string) (uint32, bool) {
	ri, _, _, ok := st.find(id)
	return ri, ok
}

// add creates the pending record of an admit with its answer (id not present: slot and h come
// from find).
func (st *idemStore) add(req *api.AdmitRequest, keyID, client string, body []byte, slot, h uint64) uint32 {
	var ri uint32
	if n := len(st.free); n > 0 {
		ri = st.free[n-1]
		st.free = st.free[:n-1]
	} else {
		st.recs = appendDoubling(st.recs, idemRec{})
		ri = uint32(len(st.recs) - 1)
	}
	st.gen++
	r := &st.recs[ri]
	*r = idemRec{hash: h, gen: st.gen,
		est: [4]int64{req.Estimate.VideoSeconds, req.Estimate.TokensIn, req.Estimate.TokensOut, req.Estimate.ComputeMs}}
	fields := [...]string{segID: req.RequestID, segAccount: req.AccountID, segEndpoint: req.Endpoint,
		segModel: req.Model, segPriority: req.Priority, segResolution: req.Estimate.Resolution,
		segKeyID: keyID, segClient: client}
	n := len(body)
	for _, f := range fields {
		n += len(f)
	}
	var b []byte
	r.bclass, r.bslot, b = st.arena.alloc(n)
	for i, f := range fields {
		r.off[i] = uint32(len(b))
		b = append(b, f...)
	}
	r.off[segBody] = uint32(len(b))
	b = append(b, body...)
	for i := segBody + 1; i <= numSegs; i++ {
		r.off[i] = uint32(len(b))
	}
	st.slots[slot] = h>>32<<32 | uint64(ri+1)
	st.n++
	if st.n*4 > len(st.slots)*3 {
		st.grow()
	}
	return ri
}

func (st *idemStore) grow() {
	old := st.slots
	st.slots = make([]uint64, 2*len(old))
	mask := uint64(len(st.slots) - 1)
	for _, e := range old {
		if e == 0 {
			continue
		}
		i := st.recs[uint32(e)-1].hash & mask
		for st.slots[i] != 0 {
			i = (i + 1) & mask
		}
		st.slots[i] = e
	}
}

// remove deletes record ri (backward-shift deletion: no tombstones) and frees its index.
func (st *idemStore) remove(ri uint32) {
	mask := uint64(len(st.slots) - 1)
	i := st.recs[ri].hash & mask
	for uint32(st.slots[i]) != ri+1 {
		i = (i + 1) & mask
	}
	for j := (i + 1) & mask; st.slots[j] != 0; j = (j + 1) & mask {
		home := st.recs[uint32(st.slots[j])-1].hash & mask
		// Move slot j back to the hole at i unless its home lies in (i, j] (cyclically).
		if (j-home)&mask >= (j-i)&mask {
			st.slots[i] = st.slots[j]
			i = j
		}
	}
	st.slots[i] = 0
	st.n--
	st.arena.release(st.recs[ri].bclass, st.recs[ri].bslot)
	st.recs[ri] = idemRec{}
	st.free = append(st.free, ri)
}

// setBlob replaces record ri's blob by its segments up to and including upTo taken from the
// current blob, then extra appended as the following segments, in a new slot.
func (st *idemStore) setBlob(ri uint32, upTo int, extra ...[]byte) {
	r := &st.recs[ri]
	oldClass, oldSlot := r.bclass, r.bslot
	keep := r.off[upTo+1]
	n := int(keep)
	for _, e := range extra {
		n += len(e)
	}
	var b []byte
	r.bclass, r.bslot, b = st.arena.alloc(n)
	b = append(b, st.arena.bytes(oldClass, oldSlot)[:keep]...)
	st.arena.release(oldClass, oldSlot)
	i := upTo + 1
	for _, e := range extra {
		r.off[i] = uint32(len(b))
		b = append(b, e...)
		i++
	}
	for ; i <= numSegs; i++ {
		r.off[i] = uint32(len(b))
	}
}

// sameAdmit reports whether req has the parameters of record ri's admit.
func (st *idemStore) sameAdmit(ri uint32, req *api.AdmitRequest) bool {
	r := &st.recs[ri]
	if r.flags&recFromLog != 0 {
		return false
	}
	return string(st.seg(ri, segAccount)) == req.AccountID && string(st.seg(ri, segEndpoint)) == req.Endpoint &&
		string(st.seg(ri, segModel)) == req.Model && string(st.seg(ri, segPriority)) == req.Priority &&
		string(st.seg(ri, segResolution)) == req.Estimate.Resolution &&
		r.est == [4]int64{req.Estimate.VideoSeconds, req.Estimate.TokensIn, req.Estimate.TokensOut, req.Estimate.ComputeMs}
}

// sameFinish reports whether req has the parameters of record ri's finish: status and usage.
// duration_ms is not one of them: the caller measures it and a retry may carry another value,
// so a retry that differs only in it gets the first answer (the first duration stands).
func (st *idemStore) sameFinish(ri uint32, req *api.FinishRequest) bool {
	r := &st.recs[ri]
	return string(st.seg(ri, segFinStatus)) == req.Status && string(st.seg(ri, segFinResolution)) == req.Usage.Resolution &&
		r.finUsage == [4]int64{req.Usage.VideoSeconds, req.Usage.TokensIn, req.Usage.TokensOut, req.Usage.ComputeMs}
}

// finished records the finish answer of record ri.
func (st *idemStore) finished(ri uint32, req *api.FinishRequest, body []byte) {
	r := &st.recs[ri]
	r.fin = finDone
	r.finUsage = [4]int64{req.Usage.VideoSeconds, req.Usage.TokensIn, req.Usage.TokensOut, req.Usage.ComputeMs}
	r.finDuration = req.DurationMs
	st.setBlob(ri, segBody, []byte(req.Status), []byte(req.Usage.Resolution), body)
}

// waitChan returns the channel closed at record ri's next change.
func (st *idemStore) waitChan(ri uint32) chan struct{} {
	ch := st.waiters[ri]
	if ch == nil {
		ch = make(chan struct{})
		st.waiters[ri] = ch
	}
	return ch
}

// wake closes record ri's wait channel, if any.
func (st *idemStore) wake(ri uint32) {
	if ch := st.waiters[ri]; ch != nil {
		close(ch)
		delete(st.waiters, ri)
	}
}

func (st *idemStore) setHandle(h, ri uint32) {
	for int(h) >= len(st.byHandle) {
		st.byHandle = appendDoubling(st.byHandle, 0)
	}
	st.byHandle[h] = ri + 1
}

// takeHandle returns and clears the record of handle h.
func (st *idemStore) takeHandle(h uint32) (uint32, bool) {
	if int(h) >= len(st.byHandle) || st.byHandle[h] == 0 {
		return 0, false
	}
	ri := st.byHandle[h] - 1
	st.byHandle[h] = 0
	return ri, true
}

// remember puts answered record ri in the bounded FIFO; the oldest answered record leaves the
// cache when it is full. Open requests are never in the FIFO.
func (st *idemStore) remember(ri uint32) {
	n := len(st.fifo)
	if st.fifoLen == n {
		old := st.fifo[st.fifoHead]
		oi := uint32(old)
		if int(oi) < len(st.recs) && st.recs[oi].gen == uint32(old>>32) && st.recs[oi].flags&recOpen == 0 {
			st.remove(oi)
		}
		st.fifoHead = (st.fifoHead + 1) % n
		st.fifoLen--
	}
	st.fifo[(st.fifoHead+st.fifoLen)%n] = uint64(st.recs[ri].gen)<<32 | uint64(ri)
	st.fifoLen++
}

// appendDoubling appends v, doubling the capacity when the slice is full: append grows a large
// slice by a quarter, so a slice growing to 200,000 entries under Service.mu is copied about
// twelve times instead of eight, each copy a pause for every admit.
func appendDoubling[T any](s []T, v T) []T {
	if len(s) == cap(s) {
		s = append(make([]T, 0, max(2*cap(s), 1024)), s...)
	}
	return append(s, v)
}
