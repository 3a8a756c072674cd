// Package secretfile keeps generated secrets: each is generated once, written to one file
// readable by its owner only (mode 0600), and read back on every later start, so keys and
// tokens survive restarts instead of changing at each one.
//
// The file is in environment format, one NAME=value per line, so a shell can load it
// (`set -a; . .tally/keys.env; set +a`) and tallyctl's other commands read it. A secret is
// added by asking for it by name with its generator: File.Get returns the kept value, or
// generates one, writes the file (atomically: a temporary file renamed over it) and returns
// it. Names are environment variable names; values are single-line.
package secretfile

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/tallyhq/tally/services/tallyctl/internal/atomicfile"
)

// Mode is the file's permission: its owner reads and writes it, nobody else.
const Mode fs.FileMode = 0o600

// bytesMax bounds the file read back (64 KiB: a few dozen secrets).
const bytesMax = 64 << 10

var nameRE = regexp.MustCompile(`^[A-Z_][A-Z0-9_]{0,127}$`)

// File is one secrets file. Its methods are safe for concurrent use within a process; one
// process at a time should own a file (tallyctl run locks its data directory).
type File struct {
	path string

	mu     sync.Mutex
	names  []string // in file order
	values map[string]string
}

// Open reads the secrets file at path, or prepares an empty one when it does not exist (it
// is created by the first Get that generates a secret). It refuses a file that others can
// read or write, or that it cannot parse, rather than silently replacing its secrets.
func Open(path string) (*File, error) {
	f := &File{path: path, values: map[string]string{}}
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secretfile: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secretfile: %s has mode %04o: others can read it; chmod 600 it (and rotate the secrets if it was exposed)", path, st.Mode().Perm())
	}
	if st.Size() > bytesMax {
		return nil, fmt.Errorf("secretfile: %s is %d bytes, more than %d", path, st.Size(), bytesMax)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secretfile: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok || !nameRE.MatchString(name) || value == "" {
			return nil, fmt.Errorf("secretfile: %s:%d: want NAME=value", path, n)
		}
		if _, dup := f.values[name]; dup {
			return nil, fmt.Errorf("secretfile: %s:%d: %s twice", path, n, name)
		}
		f.names = append(f.names, name)
		f.values[name] = value
	}
	return f, sc.Err()
}

// Path is the file's path.
func (f *File) Path() string { return f.path }

// Names lists the kept secrets' names, in file order.
func (f *File) Names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.names...)
}

// Lookup returns a kept secret.
func (f *File) Lookup(name string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[name]
	return v, ok
}

// Get returns the secret kept under name, or calls generate once, keeps its value in the
// file and returns it. The file is on disk before Get returns a new secret.
func (f *File) Get(name string, generate func() (string, error)) (string, error) {
	if !nameRE.MatchString(name) {
		return "", fmt.Errorf("secretfile: %q is not an environment variable name", name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.values[name]; ok {
		return v, nil
	}
	v, err := generate()
	if err != nil {
		return "", fmt.Errorf("secretfile: generate %s: %w", name, err)
	}
	if v == "" || strings.ContainsAny(v, "\r\n") {
		return "", fmt.Errorf("secretfile: generated %s is empty or not a single line", name)
	}
	f.names = append(f.names, name)
	f.values[name] = v
	if err := f.write(); err != nil {
		f.names = f.names[:len(f.names)-1]
		delete(f.values, name)
		return "", err
	}
	return v, nil
}

// write replaces the file with the kept secrets: a 0600 temporary file beside it, synced,
// then renamed over it, so a crash leaves the old file or the new one, never half of one.
func (f *File) write() error {
	var b strings.Builder
	b.WriteString("# Generated once by tallyctl and kept: delete a line to have it generated again.\n")
	for _, n := range f.names {
		b.WriteString(n + "=" + f.values[n] + "\n")
	}
	dir := filepath.Dir(f.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("secretfile: %w", err)
	}
	err := atomicfile.Write(f.path, Mode, func(w io.Writer) error {
		_, err := io.WriteString(w, b.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("secretfile: write %s: %w", f.path, err)
	}
	return nil
}

// RandomHex is a generator of n random bytes, hex-encoded, after prefix.
func RandomHex(prefix string, n int) func() (string, error) {
	return func() (string, error) {
		b := make([]byte, n)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		return prefix + hex.EncodeToString(b), nil
	}
}
