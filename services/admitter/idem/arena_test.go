package idem

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestBlobArenaClasses: every size gets the smallest class that holds it, wasting less than a
// quarter of the slot; sizes above the largest class get their own allocation.
func TestBlobArenaClasses(t *testing.T) {
	a := newBlobArena()
	for n := 0; n <= blobClassMax+10; n++ {
		c := a.classOf(n)
		if n > blobClassMax {
			if c != blobHuge {
				t.Fatalf("%d bytes: class %d, want its own allocation", n, c)
			}
			continue
		}
		size := a.classes[c].size
		if size < n || (c > 0 && a.classes[c-1].size >= n) {
			t.Fatalf("%d bytes: class of %d bytes is not the smallest that holds it", n, size)
		}
		if n > blobClassMin && (size-n)*4 >= size {
			t.Fatalf("%d bytes in a %d-byte slot wastes a quarter or more", n, size)
		}
	}
}

// TestBlobArenaModel: random allocations, rewrites and releases of every size class (and huge
// blobs) against a map of what each live blob must hold: a slot handed out again never
// shares bytes with a live blob.
func TestBlobArenaModel(t *testing.T) {
	a := newBlobArena()
	type live struct {
		class uint8
		slot  uint32
		want  []byte
	}
	var blobs []live
	rng := rand.New(rand.NewPCG(1, 2))
	for op := 0; op < 50_000; op++ {
		if len(blobs) > 0 && rng.IntN(3) == 0 {
			i := rng.IntN(len(blobs))
			a.release(blobs[i].class, blobs[i].slot)
			blobs[i] = blobs[len(blobs)-1]
			blobs = blobs[:len(blobs)-1]
			continue
		}
		n := rng.IntN(2000)
		if rng.IntN(500) == 0 {
			n = blobClassMax + rng.IntN(1000) // huge
		}
		c, s, b := a.alloc(n)
		if len(b) != 0 || cap(b) < n {
			t.Fatalf("alloc(%d): len %d cap %d", n, len(b), cap(b))
		}
		want := make([]byte, n)
		for i := range want {
			want[i] = byte(rng.Uint32())
		}
		b = append(b, want...)
		blobs = append(blobs, live{c, s, want})
		if op%1000 == 0 {
			for _, l := range blobs {
				if got := a.bytes(l.class, l.slot)[:len(l.want)]; !bytes.Equal(got, l.want) {
					t.Fatalf("op %d: a live blob (class %d, slot %d) was overwritten", op, l.class, l.slot)
				}
			}
		}
	}
	// A freed slot is handed out first.
	c, slot, _ := a.alloc(300)
	a.release(c, slot)
	if c2, slot2, _ := a.alloc(290); c2 != c || slot2 != slot {
		t.Fatalf("a freed slot (class %d, slot %d) was not reused: got class %d, slot %d", c, slot, c2, slot2)
	}
}
