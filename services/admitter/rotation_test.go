package admitter

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// keyStatus is the status of an admit made with key (a 200 or 429 means authenticated).
func keyStatus(t *testing.T, s *running, key, rid string) int {
	t.Helper()
	return post(t, s.url+"/v1/admit", key, `{"request_id":"`+rid+`","account_id":"acct_rot","endpoint":"codex.responses","estimate":{"tokens_in":1}}`).status
}

func waitKeyStatus(t *testing.T, s *running, key string, want func(int) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := keyStatus(t, s, key, fmt.Sprintf("r-wait-%d", time.Now().UnixNano()))
		if want(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %d after 10 s", what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func authed(st int) bool    { return st == 200 || st == 429 }
func forbidden(st int) bool { return st == 403 }

func writeKeys(t *testing.T, path, content string) {
	t.Helper()
	// Write then rename, as a deployment tool would: the poller never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestKeyRotationByPolling: a running admitter picks up ADMITTER_API_KEYS_FILE changes by
// polling (ADMITTER_API_KEYS_POLL_MS), without a restart: a key added is accepted, a key
// removed is refused with 403, and a broken file keeps the previous keys in force.
func TestKeyRotationByPolling(t *testing.T) {
	c := kafkatest.Start(t)
	kf := filepath.Join(t.TempDir(), "keys")
	writeKeys(t, kf, "# edge keys\nold:"+httpx.HashSecret("old-secret")+"\n")
	cfg := testConfig(t, c)
	cfg.APIKeys = ""
	cfg.APIKeysFile = kf
	cfg.APIKeysPollMs = 20
	s := start(t, cfg)
	if st := keyStatus(t, s, "old-secret", "r-rot-0"); !authed(st) {
		t.Fatalf("old key before rotation: %d", st)
	}
	if st := keyStatus(t, s, "new-secret", "r-rot-1"); st != 403 {
		t.Fatalf("new key before rotation: %d", st)
	}
	// Overlap: both keys valid while clients move over.
	writeKeys(t, kf, "old:"+httpx.HashSecret("old-secret")+"\nnew:"+httpx.HashSecret("new-secret")+"\n")
	waitKeyStatus(t, s, "new-secret", authed, "new key accepted")
	if st := keyStatus(t, s, "old-secret", "r-rot-2"); !authed(st) {
		t.Fatalf("old key during the overlap: %d", st)
	}
	// Retire the old key.
	writeKeys(t, kf, "new:"+httpx.HashSecret("new-secret")+"\n")
	waitKeyStatus(t, s, "old-secret", forbidden, "old key refused")
	// A broken edit is refused; the keys in force stay.
	writeKeys(t, kf, "new:not-a-hash-at-all\n")
	time.Sleep(200 * time.Millisecond) // ten polls
	if st := keyStatus(t, s, "new-secret", "r-rot-3"); !authed(st) {
		t.Fatalf("new key after a broken edit: %d", st)
	}
}

// TestKeyRotationOnSIGHUP: with polling off, the keys are reloaded when the process receives
// SIGHUP (cmd/admitter wires signal.Notify(SIGHUP) to Service.ReloadOn, as here).
func TestKeyRotationOnSIGHUP(t *testing.T) {
	c := kafkatest.Start(t)
	kf := filepath.Join(t.TempDir(), "keys")
	writeKeys(t, kf, "old:"+httpx.HashSecret("old-secret")+"\n")
	cfg := testConfig(t, c)
	cfg.APIKeys = ""
	cfg.APIKeysFile = kf
	cfg.APIKeysPollMs = 0 // no polling: only the signal reloads
	s := start(t, cfg)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.ReloadOn(ctx, hup)

	writeKeys(t, kf, "new:"+httpx.HashSecret("new-secret")+"\n")
	time.Sleep(100 * time.Millisecond)
	if st := keyStatus(t, s, "old-secret", "r-hup-0"); !authed(st) {
		t.Fatalf("old key before SIGHUP (no polling): %d", st)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitKeyStatus(t, s, "new-secret", authed, "new key after SIGHUP")
	if st := keyStatus(t, s, "old-secret", "r-hup-1"); st != 403 {
		t.Fatalf("old key after SIGHUP: %d", st)
	}
}
