package idem

// blobArena keeps the idempotency records' blobs in large pointer-free chunks, so that the
// garbage collector has one object per chunk to mark instead of one per record: with 200,000
// open requests, marking 200,000 blobs was most of each collection's mark phase (measured,
// see README), and each collection delayed the admits in flight on a saturated machine.
//
// A blob lives in a slot of the smallest size class that holds it: classes grow by a quarter
// (128, 160, 192, 224, 256, 320, … bytes), so a slot wastes less than a quarter of its size.
// Each class hands out slots from chunks of at least 64 KiB and reuses freed slots first
// (LIFO). The memory of a class stays at its high-water mark. A blob larger than the largest
// class gets its own allocation (never for the bodies ADMITTER_BODY_MAX_BYTES allows by
// default). A slot's bytes are overwritten once it is freed and handed out again, so a
// caller that reads a blob after releasing the lock that guards the Store must copy it first.
type blobArena struct {
	classes []blobClass
	// huge holds the blobs above the largest class, by handle.
	huge     map[uint32][]byte
	hugeNext uint32
}

type blobClass struct {
	size     int
	perChunk int      // slots per chunk
	chunks   [][]byte // len(chunks)*perChunk slots
	free     []uint32 // freed slots, reused first
	next     uint32   // slots handed out from the chunks so far
}

const (
	blobClassMin  = 128
	blobClassMax  = 64 << 10
	blobChunkSize = 64 << 10
	// blobHuge is the class number of a blob with its own allocation.
	blobHuge = 255
)

func newBlobArena() blobArena {
	var a blobArena
	for base := blobClassMin; base <= blobClassMax; base *= 2 {
		for step := 0; step < 4; step++ {
			if size := base + step*base/4; size <= blobClassMax {
				a.classes = append(a.classes, blobClass{size: size, perChunk: max(1, blobChunkSize/size)})
			}
		}
	}
	a.huge = map[uint32][]byte{}
	return a
}

// classOf returns the smallest class holding n bytes, or blobHuge.
func (a *blobArena) classOf(n int) uint8 {
	lo, hi := 0, len(a.classes)
	for lo < hi { // the first class with size >= n
		m := (lo + hi) / 2
		if a.classes[m].size >= n {
			hi = m
		} else {
			lo = m + 1
		}
	}
	if lo == len(a.classes) {
		return blobHuge
	}
	return uint8(lo)
}

// alloc returns a slot for n bytes: its class, its handle and its bytes (length 0, capacity
// the slot's size, or exactly n for a huge blob).
func (a *blobArena) alloc(n int) (class uint8, slot uint32, b []byte) {
	class = a.classOf(n)
	if class == blobHuge {
		slot = a.hugeNext
		a.hugeNext++
		b = make([]byte, 0, n)
		a.huge[slot] = b
		return class, slot, b
	}
	c := &a.classes[class]
	if k := len(c.free); k > 0 {
		slot = c.free[k-1]
		c.free = c.free[:k-1]
	} else {
		slot = c.next
		c.next++
		if int(slot)/c.perChunk == len(c.chunks) {
			c.chunks = append(c.chunks, make([]byte, c.perChunk*c.size))
		}
	}
	return class, slot, a.bytes(class, slot)[:0]
}

// bytes returns the whole slot (length its size); a huge blob as allocated.
func (a *blobArena) bytes(class uint8, slot uint32) []byte {
	if class == blobHuge {
		b := a.huge[slot]
		return b[:cap(b)]
	}
	c := &a.classes[class]
	off := int(slot) % c.perChunk * c.size
	return c.chunks[int(slot)/c.perChunk][off : off+c.size : off+c.size]
}

// release frees a slot.
func (a *blobArena) release(class uint8, slot uint32) {
	if class == blobHuge {
		delete(a.huge, slot)
		return
	}
	c := &a.classes[class]
	c.free = append(c.free, slot)
}
