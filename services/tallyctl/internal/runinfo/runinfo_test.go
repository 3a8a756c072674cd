package runinfo

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tallyhq/tally/services/tallyctl/internal/secretfile"
)

func TestApplyFillsOnlyUnsetSettings(t *testing.T) {
	dir := t.TempDir()
	keys, err := secretfile.Open(filepath.Join(dir, "keys.env"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Get("TALLY_ADMIN_TOKEN", func() (string, error) { return "ta_kept", nil }); err != nil {
		t.Fatal(err)
	}
	info := Info{PID: os.Getpid(), KeysFile: keys.Path(), Env: map[string]string{
		"KAFKA_BROKERS": "127.0.0.1:19092", "TALLY_LEDGER_URL": "http://127.0.0.1:41234"}}
	if err := Write(dir, info); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KAFKA_BROKERS", "broker.example:9092") // the operator's own setting wins
	t.Setenv("TALLY_LEDGER_URL", "")                 // empty counts as unset
	t.Setenv("TALLY_ADMIN_TOKEN", "")
	got, ok, err := Apply(dir)
	if err != nil || !ok || got.PID != info.PID {
		t.Fatalf("Apply: %+v, %v, %v", got, ok, err)
	}
	for k, want := range map[string]string{"KAFKA_BROKERS": "broker.example:9092",
		"TALLY_LEDGER_URL": "http://127.0.0.1:41234", "TALLY_ADMIN_TOKEN": "ta_kept"} {
		if v := os.Getenv(k); v != want {
			t.Errorf("%s = %q, want %q", k, v, want)
		}
	}
}

func TestStaleOrMissingRunFileIsIgnored(t *testing.T) {
	dir := t.TempDir()
	if _, ok, err := Apply(dir); ok || err != nil {
		t.Fatalf("no run.json: ok=%v err=%v", ok, err)
	}
	// A stack that crashed left its file; its process is gone.
	if err := Write(dir, Info{PID: 1 << 30, Env: map[string]string{"TALLY_LEDGER_URL": "http://dead"}}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TALLY_LEDGER_URL", "")
	if _, ok, err := Apply(dir); ok || err != nil || os.Getenv("TALLY_LEDGER_URL") != "" {
		t.Fatalf("stale run.json applied: ok=%v err=%v url=%q", ok, err, os.Getenv("TALLY_LEDGER_URL"))
	}
	Remove(dir)
	if _, err := os.Stat(filepath.Join(dir, FileName)); !os.IsNotExist(err) {
		t.Fatalf("Remove left run.json: %v", err)
	}
}
