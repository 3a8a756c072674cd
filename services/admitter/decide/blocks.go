package decide

// blockBits sets the elements per block of a blocks array: 4096.
const blockBits = 12

// blocks is a growable array kept in fixed blocks of 1<<blockBits elements. It grows by one
// block, never by copying what it holds: the open requests and pending changes grow with the
// load to hundreds of thousands, and a slice's growth copied all of them at once, a pause of
// milliseconds during which every decision waits for the admitter's lock (measured).
type blocks[T any] struct {
	b [][]T
	n uint32
}

func (s *blocks[T]) len() int { return int(s.n) }

// at returns element i (i < len).
func (s *blocks[T]) at(i uint32) *T { return &s.b[i>>blockBits][i&(1<<blockBits-1)] }

// add appends v and returns its index.
func (s *blocks[T]) add(v T) uint32 {
	if int(s.n>>blockBits) == len(s.b) {
		s.b = append(s.b, make([]T, 1<<blockBits))
	}
	i := s.n
	s.n++
	*s.at(i) = v
	return i
}
