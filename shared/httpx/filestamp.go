package httpx

import (
	"os"
	"sync/atomic"
)

// FileStamp remembers the version of a file that is re-read when it changes (a keys file):
// its modification time and size, folded into one number. The zero value has seen no version.
type FileStamp struct{ v atomic.Int64 }

// FileVersion is path's modification time and size, folded: take it before reading the file
// (a change during the read is then seen at the next poll).
func FileVersion(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return st.ModTime().UnixNano() ^ st.Size(), nil
}

// Mark records v as the version in force.
func (f *FileStamp) Mark(v int64) { f.v.Store(v) }

// Changed reports whether path's version differs from the one last marked, with the version
// now; a file that cannot be read has not changed (the keys in force stay).
func (f *FileStamp) Changed(path string) (int64, bool) {
	v, err := FileVersion(path)
	return v, err == nil && v != f.v.Load()
}
