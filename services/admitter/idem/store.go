// Package idem is the admitter's idempotency store: request_id → the admit and finish answers,
// for every open request and the last ADMITTER_IDEMPOTENCY_MAX answered ids, laid out so that
// the garbage collector scans none of it (see Store).
//
// A record goes through: Add (admit pending: repeats Await it) → Answered (allowed: open under
// the decision table's handle; denied: answered) or Forget (its event was not acknowledged);
// an open record is then BeginFinish → Finished or FinishFailed, or leaves the table by
// Settle (finished elsewhere) or Expire (hold expired). AddFromLog makes the record of a
// request started by another admitter while its finish is published.
//
// A Store is not safe for concurrent use: the admitter guards it with the same mutex as its
// decision table, because a record and the decision it caches change together.
package idem

import (
	"context"
	"hash/maphash"
	"net/http"
	"sync"

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
	segFunder // the funding account fixed at admission ("" the account's own)
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

// FinState is where a record's finish is.
type FinState uint8

// Finish states of a record.
const (
	FinNone    FinState = iota // not finished (or the last finish failed)
	FinPending                 // a finish is being published
	FinDone                    // finished: the finish answer is in the blob
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
	fin    FinState
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

// Ref is a record of the Store, valid until the record is forgotten or leaves the store.
type Ref = uint32

// Slot is where an id that Find did not find goes; valid until the store next changes.
type Slot struct{ i, h uint64 }

// Store is the cache; its owner's lock guards it (see the package comment).
type Store struct {
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

// presizeMax bounds the records New makes room for up front.
const presizeMax = 1 << 20

// New makes room up front for the max answered records it holds once full (up to
// presizeMax): the index at its final size and the records' capacity, so that the store
// does not stop every admit to rehash or copy its records while it fills (each growth of a
// 100,000-record store was a pause of milliseconds under the admitter's lock, measured). At the
// default 200,000 that is 4 MiB of index and 34 MB of records (168 bytes each).
func New(max int) *Store {
	n := min(max, presizeMax)
	slots := 1024
	for slots*3 < n*4 {
		slots *= 2
	}
	return &Store{seed: maphash.MakeSeed(), slots: make([]uint64, slots), recs: make([]idemRec, 0, n),
		fifo: make([]uint64, max), arena: newBlobArena(), waiters: map[uint32]chan struct{}{}}
}

// seg returns segment i of record ri, valid while the Store's lock is held: once the
// record's blob is replaced or the record removed, its slot is handed out again and
// overwritten, so what is used after unlocking is copied first (segCopy).
func (st *Store) seg(ri uint32, i int) []byte {
	r := &st.recs[ri]
	return st.arena.bytes(r.bclass, r.bslot)[r.off[i]:r.off[i+1]:r.off[i+1]]
}

// segCopy returns a copy of segment i of record ri, to use after unlocking.
func (st *Store) segCopy(ri uint32, i int) []byte {
	return append([]byte(nil), st.seg(ri, i)...)
}

func (st *Store) str(ri uint32, i int) string { return string(st.seg(ri, i)) }

// Find returns the record of id, or ok=false and the slot where Add would insert it.
func (st *Store) Find(id string) (ri Ref, slot Slot, ok bool) {
	h := maphash.String(st.seed, id)
	mask := uint64(len(st.slots) - 1)
	tag := h >> 32
	for i := h & mask; ; i = (i + 1) & mask {
		e := st.slots[i]
		if e == 0 {
			return 0, Slot{i: i, h: h}, false
		}
		if e>>32 == tag && string(st.seg(uint32(e)-1, segID)) == id {
			return uint32(e) - 1, Slot{}, true
		}
	}
}

// Lookup returns the record of id.
func (st *Store) Lookup(id string) (Ref, bool) {
	ri, _, ok := st.Find(id)
	return ri, ok
}

// Len is the number of records held.
func (st *Store) Len() int { return st.n }

// Add creates the pending record of an admit with its answer body, at slot (from Find, which
// did not find req.RequestID), and funder, the funding account the decision fixed ("" the
// account's own). Until Answered or Forget, a repeat Awaits it.
func (st *Store) Add(slot Slot, req *api.AdmitRequest, funder, keyID, client string, body []byte) Ref {
	h := slot.h
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
	fields := [...]string{segID: req.RequestID, segAccount: req.AccountID, segFunder: funder, segEndpoint: req.Endpoint,
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
	st.slots[slot.i] = h>>32<<32 | uint64(ri+1)
	st.n++
	if st.n*4 > len(st.slots)*3 {
		st.grow()
	}
	return ri
}

func (st *Store) grow() {
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
func (st *Store) remove(ri uint32) {
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
func (st *Store) setBlob(ri uint32, upTo int, extra ...[]byte) {
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

// SameAdmit reports whether req has the parameters of record ri's admit.
func (st *Store) SameAdmit(ri uint32, req *api.AdmitRequest) bool {
	r := &st.recs[ri]
	if r.flags&recFromLog != 0 {
		return false
	}
	return string(st.seg(ri, segAccount)) == req.AccountID && string(st.seg(ri, segEndpoint)) == req.Endpoint &&
		string(st.seg(ri, segModel)) == req.Model && string(st.seg(ri, segPriority)) == req.Priority &&
		string(st.seg(ri, segResolution)) == req.Estimate.Resolution &&
		r.est == [4]int64{req.Estimate.VideoSeconds, req.Estimate.TokensIn, req.Estimate.TokensOut, req.Estimate.ComputeMs}
}

// SameFinish reports whether req has the parameters of record ri's finish: status and usage.
// duration_ms is not one of them: the caller measures it and a retry may carry another value,
// so a retry that differs only in it gets the first answer (the first duration stands).
func (st *Store) SameFinish(ri uint32, req *api.FinishRequest) bool {
	r := &st.recs[ri]
	return string(st.seg(ri, segFinStatus)) == req.Status && string(st.seg(ri, segFinResolution)) == req.Usage.Resolution &&
		r.finUsage == [4]int64{req.Usage.VideoSeconds, req.Usage.TokensIn, req.Usage.TokensOut, req.Usage.ComputeMs}
}

// AddFromLog creates the record of a request this admitter did not admit (started in the
// events log by another admitter, or an earlier incarnation) while its finish is published:
// allowed, no admit answer to replay, its finish pending (a concurrent repeat Awaits it).
// slot comes from Find, which did not find id.
func (st *Store) AddFromLog(slot Slot, id, account, funder, endpoint, model string) Ref {
	ri := st.Add(slot, &api.AdmitRequest{RequestID: id, AccountID: account, Endpoint: endpoint, Model: model}, funder, "", "", nil)
	r := &st.recs[ri]
	r.status, r.flags = http.StatusOK, recAllowed|recFromLog
	st.BeginFinish(ri)
	return ri
}

// SetAdmitBody replaces the admit answer of pending record ri (the decision changed before
// it was answered: a log-order revocation).
func (st *Store) SetAdmitBody(ri Ref, body []byte) { st.setBlob(ri, segClient, body) }

// Answered records the admit answer of pending record ri (status; retryAfterMs is kept for a
// 429's Retry-After) and wakes its waiters. An allowed request stays open under the decision
// table's handle until Settle or Expire; a denied one is answered (in the bounded FIFO).
func (st *Store) Answered(ri Ref, status int, retryAfterMs int64, allowed bool, handle uint32) {
	r := &st.recs[ri]
	r.status = uint16(status)
	if status == http.StatusTooManyRequests {
		r.retryAfterMs = retryAfterMs
	}
	if allowed {
		r.flags |= recAllowed | recOpen
		r.handle = handle
		st.setHandle(handle, ri)
	} else {
		st.remember(ri)
	}
	st.wake(ri)
}

// Forget removes record ri, whose admit (or log finish) was not acknowledged, and wakes its
// waiters (they find it gone): a retry decides afresh.
func (st *Store) Forget(ri Ref) {
	st.wake(ri)
	st.remove(ri)
}

// AdmitAnswer returns record ri's admit answer: status, Retry-After in ms and a copy of the
// body (to write after unlocking).
func (st *Store) AdmitAnswer(ri Ref) (status int, retryAfterMs int64, body []byte) {
	r := &st.recs[ri]
	return int(r.status), r.retryAfterMs, st.segCopy(ri, segBody)
}

// FinishAnswer returns a copy of record ri's finish answer (FinDone).
func (st *Store) FinishAnswer(ri Ref) []byte { return st.segCopy(ri, segFinBody) }

// Allowed reports whether record ri's request was admitted (here, or in the log).
func (st *Store) Allowed(ri Ref) bool { return st.recs[ri].flags&recAllowed != 0 }

// Fin is where record ri's finish is.
func (st *Store) Fin(ri Ref) FinState { return st.recs[ri].fin }

// Open returns the decision-table handle of record ri while its request is open there.
func (st *Store) Open(ri Ref) (handle uint32, ok bool) {
	r := &st.recs[ri]
	return r.handle, r.flags&recOpen != 0 && r.status != 0
}

// Request returns the account, the funding account ("" the account's own), the endpoint and
// the model record ri's request was admitted with: the finish names the same funding account
// as the start, whatever the account's funding is by then.
func (st *Store) Request(ri Ref) (account, funder, endpoint, model string) {
	return st.str(ri, segAccount), st.str(ri, segFunder), st.str(ri, segEndpoint), st.str(ri, segModel)
}

// BeginFinish marks record ri's finish as being published: repeats Await it.
func (st *Store) BeginFinish(ri Ref) {
	r := &st.recs[ri]
	r.fin = FinPending
	r.finSeq++
}

// FinishFailed records that record ri's finish was not acknowledged (a retry may finish it)
// and wakes its waiters. The record cannot have left the store meanwhile: only answered
// records that are neither open nor being finished are in the FIFO.
func (st *Store) FinishFailed(ri Ref) {
	r := &st.recs[ri]
	r.fin = FinNone
	if r.flags&recOpen == 0 { // expired meanwhile: nothing can finish it any more
		st.remember(ri)
	}
	st.wake(ri)
}

// Finished records the finish answer of record ri (req's status and usage are what a repeat
// must match), puts it in the bounded FIFO and wakes its waiters.
func (st *Store) Finished(ri Ref, req *api.FinishRequest, body []byte) {
	st.finished(ri, req, body)
	st.remember(ri)
	st.wake(ri)
}

// Settle records that record ri's request left the decision table (finished here or
// elsewhere): it is no longer open under its handle.
func (st *Store) Settle(ri Ref) {
	r := &st.recs[ri]
	if r.flags&recOpen == 0 {
		return
	}
	st.takeHandle(r.handle)
	r.flags &^= recOpen
}

// Expire records that the request open under handle expired in the decision table; it
// reports whether a record had it. Unless a finish of it is in progress or done, the record is
// then answered (in the FIFO): its admit still replays, its finish is 404.
func (st *Store) Expire(handle uint32) bool {
	ri, ok := st.takeHandle(handle)
	if !ok {
		return false
	}
	r := &st.recs[ri]
	r.flags &^= recOpen
	if r.fin == FinNone {
		st.remember(ri)
	}
	return true
}

// WaitOutcome is how Await ended.
type WaitOutcome uint8

const (
	WaitDone      WaitOutcome = iota // the call waited for has its answer; the lock is held
	WaitCancelled                    // the waiting request's context ended; the lock is released
	WaitFailed                       // the call waited for failed (the record is gone or was replaced); the lock is released
)

// Await waits, with mu (the lock guarding the Store) held, while record ri (request id id)
// has a call in progress: its admit (finish false) or its finish (finish true); it releases
// mu while it waits. The record is identified by its generation (and, for a finish, its
// finish attempt), so that a waiter woken after that call failed, and another took the id or
// retried, does not take the new call's answer for it.
func (st *Store) Await(ctx context.Context, mu sync.Locker, id string, ri Ref, finish bool) (Ref, WaitOutcome) {
	gen, seq := st.recs[ri].gen, st.recs[ri].finSeq
	pending := func() bool {
		if finish {
			return st.recs[ri].fin == FinPending
		}
		return st.recs[ri].status == 0
	}
	for pending() {
		ch := st.waitChan(ri)
		mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ri, WaitCancelled
		}
		mu.Lock()
		var ok bool
		if ri, ok = st.Lookup(id); !ok || st.recs[ri].gen != gen || (finish && st.recs[ri].finSeq != seq) {
			mu.Unlock()
			return ri, WaitFailed
		}
	}
	return ri, WaitDone
}

// finished records the finish answer of record ri.
func (st *Store) finished(ri uint32, req *api.FinishRequest, body []byte) {
	r := &st.recs[ri]
	r.fin = FinDone
	r.finUsage = [4]int64{req.Usage.VideoSeconds, req.Usage.TokensIn, req.Usage.TokensOut, req.Usage.ComputeMs}
	r.finDuration = req.DurationMs
	st.setBlob(ri, segBody, []byte(req.Status), []byte(req.Usage.Resolution), body)
}

// waitChan returns the channel closed at record ri's next change.
func (st *Store) waitChan(ri uint32) chan struct{} {
	ch := st.waiters[ri]
	if ch == nil {
		ch = make(chan struct{})
		st.waiters[ri] = ch
	}
	return ch
}

// wake closes record ri's wait channel, if any.
func (st *Store) wake(ri uint32) {
	if ch := st.waiters[ri]; ch != nil {
		close(ch)
		delete(st.waiters, ri)
	}
}

func (st *Store) setHandle(h, ri uint32) {
	for int(h) >= len(st.byHandle) {
		st.byHandle = appendDoubling(st.byHandle, 0)
	}
	st.byHandle[h] = ri + 1
}

// takeHandle returns and clears the record of handle h.
func (st *Store) takeHandle(h uint32) (uint32, bool) {
	if int(h) >= len(st.byHandle) || st.byHandle[h] == 0 {
		return 0, false
	}
	ri := st.byHandle[h] - 1
	st.byHandle[h] = 0
	return ri, true
}

// remember puts answered record ri in the bounded FIFO; the oldest answered record leaves the
// cache when it is full. Open requests are never in the FIFO.
func (st *Store) remember(ri uint32) {
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
// slice by a quarter, so a slice growing to 200,000 entries under the admitter's lock is copied about
// twelve times instead of eight, each copy a pause for every admit.
func appendDoubling[T any](s []T, v T) []T {
	if len(s) == cap(s) {
		s = append(make([]T, 0, max(2*cap(s), 1024)), s...)
	}
	return append(s, v)
}
