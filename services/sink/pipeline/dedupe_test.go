package pipeline

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func randomUUID(r *rand.Rand) (string, [16]byte) {
	var b [16]byte
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), b
}

func TestKeyOfParsesUUIDs(t *testing.T) {
	s, id := randomUUID(rand.New(rand.NewPCG(1, 2)))
	k := keyOf(s)
	var want eventKey
	for i := 0; i < 16; i++ {
		want[i/8] = want[i/8]<<8 | uint64(id[i])
	}
	if k != want {
		t.Fatalf("keyOf(%s) = %x, want %x", s, k, want)
	}
	if keyOf("not-a-uuid") == keyOf("not-a-uuid2") || keyOf("x") != keyOf("x") || keyOf("x") == (eventKey{}) {
		t.Fatal("hashed keys are not a function of the id")
	}
}

// TestWindowMatchesModel checks the window against a plain model (the rule: a stored-kind
// message is a duplicate iff a stored-kind message at one of the previous W offsets has the
// same key) over random streams with repeats, gaps and non-stored messages.
func TestWindowMatchesModel(t *testing.T) {
	for _, w := range []int{1, 2, 3, 7, 64, 1000} {
		r := rand.New(rand.NewPCG(uint64(w), 1))
		win := newWindow(w)
		type msg struct {
			k      eventKey
			stored bool
		}
		log := map[int64]msg{}
		off := int64(r.IntN(5))
		for i := 0; i < 20000; i++ {
			// Few distinct ids so that repeats are frequent, at every distance.
			m := msg{k: keyOf(fmt.Sprint(r.IntN(3 * w))), stored: r.IntN(10) != 0}
			want := false
			if m.stored {
				for o := off - int64(w); o < off; o++ {
					if p, ok := log[o]; ok && p.stored && p.k == m.k {
						want = true
					}
				}
			}
			if got := win.observe(off, m.k, m.stored); got != want {
				t.Fatalf("W=%d, offset %d: dup %v, want %v", w, off, got, want)
			}
			log[off] = m
			off++
			if r.IntN(50) == 0 {
				off += int64(r.IntN(2 * w)) // a gap (deleted or missing offsets)
			}
		}
		n := 0
		for _, e := range win.table {
			if e != 0 {
				n++
			}
		}
		if n > w {
			t.Fatalf("W=%d: %d keys in the table", w, n)
		}
	}
}

func BenchmarkWindowObserve(b *testing.B) {
	win := newWindow(100000)
	keys := make([]eventKey, 1<<16)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range keys {
		s, _ := randomUUID(r)
		keys[i] = keyOf(s)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		win.observe(int64(i), keys[i&(1<<16-1)], true)
	}
}

func BenchmarkKeyOf(b *testing.B) {
	s, _ := randomUUID(rand.New(rand.NewPCG(5, 6)))
	b.ReportAllocs()
	for b.Loop() {
		keyOf(s)
	}
	if a := testing.AllocsPerRun(100, func() { keyOf(s) }); a != 0 {
		b.Fatalf("keyOf allocates %v times per call", a)
	}
}
