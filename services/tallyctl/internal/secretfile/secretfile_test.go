package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGeneratedOnceAndKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "keys.env")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	gen := func() (string, error) { calls++; return "v" + strings.Repeat("x", calls), nil }
	a, err := f.Get("TALLY_API_KEY", gen)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := f.Get("TALLY_API_KEY", gen); again != a || calls != 1 {
		t.Fatalf("second Get: %q after %d generations, want %q after 1", again, calls, a)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != Mode {
		t.Fatalf("mode %04o, want %04o", st.Mode().Perm(), Mode)
	}
	// A later secret slots in beside the first; a new process reads both back unchanged.
	b, err := f.Get("CLICKHOUSE_PASSWORD", RandomHex("", 16))
	if err != nil || len(b) != 32 {
		t.Fatalf("RandomHex: %q, %v", b, err)
	}
	f2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"TALLY_API_KEY": a, "CLICKHOUSE_PASSWORD": b} {
		got, err := f2.Get(name, func() (string, error) { return "", errors.New("must not generate") })
		if err != nil || got != want {
			t.Fatalf("%s after reopening: %q, %v; want %q", name, got, err, want)
		}
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != Mode {
		t.Fatalf("mode after the second write %04o", st.Mode().Perm())
	}
	// No temporary files are left beside it.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only the keys file", len(entries))
	}
}

func TestRefusesUnsafeOrBrokenFiles(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, body string
		mode       os.FileMode
		want       string
	}{
		{"readable", "A=b\n", 0o644, "others can read it"},
		{"garbage", "not a line\n", 0o600, "want NAME=value"},
		{"empty value", "A=\n", 0o600, "want NAME=value"},
		{"duplicate", "A=1\nA=2\n", 0o600, "A twice"},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_"))
		if err := os.WriteFile(p, []byte(c.body), c.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, c.mode); err != nil { // past the umask
			t.Fatal(err)
		}
		if _, err := Open(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Open = %v, want an error with %q", c.name, err, c.want)
		}
	}
	f, err := Open(filepath.Join(dir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Get("lower", RandomHex("", 4)); err == nil {
		t.Error("a name that is not an environment variable was accepted")
	}
	if _, err := f.Get("A", func() (string, error) { return "two\nlines", nil }); err == nil {
		t.Error("a multi-line secret was accepted")
	}
	if _, err := f.Get("B", func() (string, error) { return "", errors.New("no entropy") }); err == nil {
		t.Error("a generator's error was swallowed")
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed Gets wrote the file: %v", err)
	}
}
