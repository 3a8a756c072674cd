package chembedtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLibPath(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("CHDB_LIB_PATH", "")
	t.Setenv("TALLY_CACHE_DIR", cache)
	_, err := LibPath()
	if err == nil || !strings.Contains(err.Error(), "libchdb.so not found: run `make chdb`") {
		t.Fatalf("empty cache: %v", err)
	}
	lib := filepath.Join(cache, "chdb", "_chdb_lib-x_1", "libchdb.so")
	if err := os.MkdirAll(filepath.Dir(lib), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := LibPath(); err != nil || got != lib {
		t.Fatalf("cache: %q, %v", got, err)
	}
	t.Setenv("TALLY_CACHE_DIR", "")
	t.Setenv("XDG_CACHE_HOME", filepath.Join(cache, "xdg"))
	if _, err := LibPath(); err == nil || !strings.Contains(err.Error(), filepath.Join(cache, "xdg", "tally", "chdb")) {
		t.Fatalf("XDG_CACHE_HOME not honoured: %v", err)
	}
	t.Setenv("CHDB_LIB_PATH", lib)
	if got, err := LibPath(); err != nil || got != lib {
		t.Fatalf("CHDB_LIB_PATH: %q, %v", got, err)
	}
}

func TestNewDatabase(t *testing.T) {
	s := Start(t)
	a, b := NewDatabase(t, s), NewDatabase(t, s)
	if a == b {
		t.Fatalf("two tests share database %s", a)
	}
	if err := exec(s, "CREATE TABLE `"+a+"`.x (n UInt8) ENGINE = Memory"); err != nil {
		t.Fatal(err)
	}
}
