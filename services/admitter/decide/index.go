package decide

import "hash/maphash"

// keyInline is how many bytes of an account id live inside the account record: ids up to this
// length (e.g. UUIDs, 36 bytes) are compared in the record's first cache line, without a
// pointer to follow. Longer ids (events.MaxIDBytes allows 128) are kept in Table.longIDs.
const keyInline = 40

// keyLong marks an account record whose id is longer than keyInline.
const keyLong = 0xFF

// index maps account ids to their index in Table.accounts: open addressing with linear
// probing over 8-byte slots (the hash's high 32 bits as a tag beside index+1; 0 = empty), so
// that a lookup usually costs one cache line of the index plus the account record, where the
// id is compared. Accounts are never removed, so there are no tombstones. Its size is a power
// of two kept at most 3/4 full: at 1M accounts it is 2^21 slots, 16 MiB (≈ 17 bytes per
// account). It holds no pointers, so the garbage collector never scans it.
type index struct {
	seed  maphash.Seed
	slots []uint64
	n     int
}

func newIndex() index { return index{seed: maphash.MakeSeed(), slots: make([]uint64, 16)} }

// find returns the account index of id, or ok=false and the slot where it would be inserted.
func (t *Table) find(id string) (ai uint32, slot uint64, h uint64, ok bool) {
	h = maphash.String(t.idx.seed, id)
	mask := uint64(len(t.idx.slots) - 1)
	tag := h >> 32
	for i := h & mask; ; i = (i + 1) & mask {
		e := t.idx.slots[i]
		if e == 0 {
			return 0, i, h, false
		}
		if e>>32 == tag && t.keyIs(uint32(e)-1, id) {
			return uint32(e) - 1, i, h, true
		}
	}
}

// keyIs reports whether account ai's id is id.
func (t *Table) keyIs(ai uint32, id string) bool {
	a := &t.accounts[ai]
	if a.keyLen == keyLong {
		return len(id) > keyInline && t.longIDs[ai] == id
	}
	return int(a.keyLen) == len(id) && string(a.key[:a.keyLen]) == id
}

// id returns account ai's id.
func (t *Table) id(ai uint32) string {
	a := &t.accounts[ai]
	if a.keyLen == keyLong {
		return t.longIDs[ai]
	}
	return string(a.key[:a.keyLen])
}

// hashOf is the index hash of account ai's id (maphash.Bytes equals maphash.String of the
// same bytes).
func (t *Table) hashOf(ai uint32) uint64 {
	a := &t.accounts[ai]
	if a.keyLen == keyLong {
		return maphash.String(t.idx.seed, t.longIDs[ai])
	}
	return maphash.Bytes(t.idx.seed, a.key[:a.keyLen])
}

// insert records id → ai at slot (from find), growing the index past 3/4 full.
func (t *Table) insert(id string, ai uint32, slot, h uint64) {
	a := &t.accounts[ai]
	if len(id) > keyInline {
		a.keyLen = keyLong
		if t.longIDs == nil {
			t.longIDs = map[uint32]string{}
		}
		t.longIDs[ai] = id
	} else {
		a.keyLen = uint8(copy(a.key[:], id))
	}
	t.idx.slots[slot] = h>>32<<32 | uint64(ai+1)
	t.idx.n++
	if t.idx.n*4 > len(t.idx.slots)*3 {
		t.grow()
	}
}

// grow doubles the index and re-inserts every account (amortised O(1) per insert).
func (t *Table) grow() {
	slots := make([]uint64, 2*len(t.idx.slots))
	if t.cfg.HugePages {
		adviseHuge(slots)
	}
	mask := uint64(len(slots) - 1)
	for ai := range t.accounts {
		h := t.hashOf(uint32(ai))
		i := h & mask
		for slots[i] != 0 {
			i = (i + 1) & mask
		}
		slots[i] = h>>32<<32 | uint64(ai+1)
	}
	t.idx.slots = slots
}
