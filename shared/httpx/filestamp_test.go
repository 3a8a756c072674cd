package httpx

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFileStamp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys")
	var f FileStamp
	if _, changed := f.Changed(path); changed {
		t.Fatal("a missing file changed")
	}
	if err := os.WriteFile(path, []byte("a:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	v, changed := f.Changed(path)
	if !changed {
		t.Fatal("a new file did not change")
	}
	f.Mark(v)
	if _, changed := f.Changed(path); changed {
		t.Fatal("an unchanged file changed")
	}
	if err := os.WriteFile(path, []byte("a:1\nb:2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, changed := f.Changed(path); !changed {
		t.Fatal("a grown file did not change")
	}
	later := time.Now().Add(time.Hour)
	if err := os.WriteFile(path, []byte("a:1\nb:3\n"), 0o600); err != nil { // same size
		t.Fatal(err)
	}
	v, _ = f.Changed(path)
	f.Mark(v)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if _, changed := f.Changed(path); !changed {
		t.Fatal("a touched file of the same size did not change")
	}
}
