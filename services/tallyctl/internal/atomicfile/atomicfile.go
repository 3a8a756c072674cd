// Package atomicfile writes a file whole or not at all: into a temporary file next to it
// (mode 0600 from the start), synced, then renamed over it.
package atomicfile

import (
	"io"
	"os"
	"path/filepath"
)

// Write writes path with mode through write; on any error the old file (or none) stays.
func Write(path string, mode os.FileMode, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*") // created 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	err = tmp.Chmod(mode)
	if err == nil {
		err = write(tmp)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	return err
}
