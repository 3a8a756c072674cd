package pipeline

import (
	"encoding/binary"
	"hash/maphash"

	"github.com/tallyhq/tally/shared/events"
)

// eventKey is an event id as 16 bytes: the UUID itself for a canonical 36-character id (every
// id events.Decode accepts), else a 128-bit keyed hash of the string (never zero).
type eventKey [2]uint64

var keySeeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}

// keyOf returns id's key. A key lives only in this process's memory (windows are rebuilt by
// the warm-up after a restart), so the per-process hash seeds are fine.
func keyOf(id string) eventKey {
	if k, ok := parseUUID(id); ok && k != (eventKey{}) {
		return k
	}
	k := eventKey{maphash.String(keySeeds[0], id), maphash.String(keySeeds[1], id)}
	if k == (eventKey{}) {
		k[0] = 1
	}
	return k
}

// parseUUID parses the canonical 8-4-4-4-12 form into the key: the UUID's bytes, big-endian.
func parseUUID(s string) (eventKey, bool) {
	u, ok := events.ParseID(s)
	if !ok {
		return eventKey{}, false
	}
	return eventKey{binary.BigEndian.Uint64(u[:8]), binary.BigEndian.Uint64(u[8:])}, true
}

// window remembers the event ids stored-kind messages carried at the last W offsets of one
// partition: the ids of offsets [next-W, next). Slot i of the ring holds the key of the
// offset o with o mod W == i (zero: that offset is outside the window, was not a
// stored-kind message, or did not exist). An open-addressing set with linear probing indexes
// the occupied slots (entries are slot+1, 0 = empty), at most W of them in a table of at
// least 2W entries. Memory: 16·W bytes of ring + 4·2^⌈log2 2W⌉ bytes of table (2.65 MB at
// W = 100,000). Used by one goroutine at a time.
type window struct {
	keys  []eventKey
	table []uint32
	mask  uint64
	shift uint
	next  int64 // offset after the last one observed; -1 = none yet
}

func newWindow(w int) *window {
	size, shift := 1, uint(64)
	for size < 2*w {
		size <<= 1
		shift--
	}
	return &window{keys: make([]eventKey, w), table: make([]uint32, size), mask: uint64(size - 1), shift: shift, next: -1}
}

func (w *window) home(k eventKey) uint64 {
	return ((k[0] ^ k[1]) * 0x9E3779B97F4A7C15) >> w.shift & w.mask
}

// observe records the message at offset off, which must be at or after every offset observed
// before (a gap evicts the skipped offsets). stored says whether the message carries an event
// the sink stores; its key is remembered then. It reports whether k was already remembered,
// i.e. a stored-kind message with the same event id is at one of the offsets [off-W, off).
func (w *window) observe(off int64, k eventKey, stored bool) (dup bool) {
	n := int64(len(w.keys))
	if w.next >= 0 && off > w.next {
		if off-w.next >= n {
			clear(w.keys)
			clear(w.table)
		} else {
			for o := w.next; o < off; o++ {
				w.evict(int(o % n))
			}
		}
	}
	w.next = off + 1
	if stored {
		dup = w.contains(k)
	}
	// The slot held offset off-W: it leaves the window of the next offset.
	s := int(off % n)
	w.evict(s)
	if stored {
		w.keys[s] = k
		i := w.home(k)
		for w.table[i] != 0 {
			i = (i + 1) & w.mask
		}
		w.table[i] = uint32(s) + 1
	}
	return dup
}

func (w *window) contains(k eventKey) bool {
	for i := w.home(k); w.table[i] != 0; i = (i + 1) & w.mask {
		if w.keys[w.table[i]-1] == k {
			return true
		}
	}
	return false
}

// evict removes slot s's key (backward-shift deletion, so no tombstones).
func (w *window) evict(s int) {
	k := w.keys[s]
	if k == (eventKey{}) {
		return
	}
	w.keys[s] = eventKey{}
	i := w.home(k)
	for w.table[i] != uint32(s)+1 {
		i = (i + 1) & w.mask
	}
	j := i
	for {
		j = (j + 1) & w.mask
		e := w.table[j]
		if e == 0 {
			break
		}
		h := w.home(w.keys[e-1])
		// Move e back to the hole at i unless its home lies cyclically in (i, j].
		if (i <= j && (h <= i || h > j)) || (i > j && h <= i && h > j) {
			w.table[i] = e
			i = j
		}
	}
	w.table[i] = 0
}
