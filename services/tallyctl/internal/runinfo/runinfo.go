// Package runinfo is how tallyctl's commands find the stack `tallyctl run` started: run
// writes what it started (its addresses as the settings the other commands read, and its
// keys file) to <data dir>/run.json, and removes it when it stops; the other commands
// fill every setting the operator did not set from it.
package runinfo

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/tallyhq/tally/services/tallyctl/internal/atomicfile"
	"github.com/tallyhq/tally/services/tallyctl/internal/secretfile"
)

// FileName is the file in the data directory.
const FileName = "run.json"

// DefaultDataDir is the data directory when TALLY_DATA_DIR is not set.
const DefaultDataDir = ".tally"

// bytesMax bounds run.json as read back.
const bytesMax = 64 << 10

// Info is what a running `tallyctl run` started.
type Info struct {
	// PID is the process of `tallyctl run`; a file whose process is gone is stale.
	PID int `json:"pid"`
	// Ephemeral marks an in-memory stack (kfake, a temporary ClickHouse).
	Ephemeral bool `json:"ephemeral"`
	// Env holds the settings, by environment variable, that point the other commands at the
	// stack: KAFKA_BROKERS, TALLY_TOPIC_PREFIX, TALLY_LEDGER_URL, TALLY_ADMITTER_URL,
	// CLICKHOUSE_ADDR, CLICKHOUSE_PROTOCOL, CLICKHOUSE_DATABASE, CLICKHOUSE_USER,
	// TALLY_PRICEBOOK_PATH.
	Env map[string]string `json:"env"`
	// KeysFile is the stack's secrets file (secretfile format), "" if none.
	KeysFile string `json:"keys_file,omitempty"`
}

// DataDir is the data directory: $TALLY_DATA_DIR, or .tally in the working directory.
func DataDir() string {
	if d := os.Getenv("TALLY_DATA_DIR"); d != "" {
		return d
	}
	return DefaultDataDir
}

// Write writes info to dir/run.json (atomically).
func Write(dir string, info Info) error {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	err = atomicfile.Write(filepath.Join(dir, FileName), 0o600, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		return fmt.Errorf("runinfo: %w", err)
	}
	return nil
}

// Remove removes dir/run.json.
func Remove(dir string) { _ = os.Remove(filepath.Join(dir, FileName)) }

// Read reads dir/run.json. ok is false when there is none, or when its process has gone.
func Read(dir string) (info Info, ok bool, err error) {
	p := filepath.Join(dir, FileName)
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, false, nil
	}
	if err != nil {
		return Info{}, false, fmt.Errorf("runinfo: %w", err)
	}
	if st.Size() > bytesMax {
		return Info{}, false, fmt.Errorf("runinfo: %s is %d bytes, more than %d", p, st.Size(), bytesMax)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return Info{}, false, fmt.Errorf("runinfo: %w", err)
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return Info{}, false, fmt.Errorf("runinfo: %s: %w", p, err)
	}
	if !alive(info.PID) {
		return info, false, nil
	}
	return info, true, nil
}

// alive reports whether process pid exists.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Apply fills every setting that is not set in the environment from the running stack's
// run.json in dir, then from its keys file, and returns what it found (ok false: no
// running stack there, nothing changed). Settings the operator set always win.
func Apply(dir string) (info Info, ok bool, err error) {
	info, ok, err = Read(dir)
	if err != nil || !ok {
		return info, ok, err
	}
	for k, v := range info.Env {
		setIfUnset(k, v)
	}
	if info.KeysFile != "" {
		keys, err := secretfile.Open(info.KeysFile)
		if err != nil {
			return info, true, err
		}
		for _, name := range keys.Names() {
			v, _ := keys.Lookup(name)
			setIfUnset(name, v)
		}
	}
	return info, true, nil
}

func setIfUnset(k, v string) {
	if os.Getenv(k) == "" && v != "" { // an empty variable counts as unset, as everywhere in tallyctl
		_ = os.Setenv(k, v)
	}
}
