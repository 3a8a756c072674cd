package admitter

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tallyhq/tally/shared/httpx"
)

func TestConfigDefaultsAndValidation(t *testing.T) {
	d := DefaultConfig()
	if d.ListenAddr != "127.0.0.1:8081" || d.KafkaBrokers != "127.0.0.1:9092" || d.TopicPrefix != "tally." ||
		d.BatchTimeoutMs != 2 || d.IdempotencyMax != 200_000 || !d.FollowPeers || d.Instances != 1 {
		t.Fatalf("defaults: %+v", d)
	}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "ADMITTER_API_KEYS") {
		t.Fatalf("no keys must be refused: %v", err)
	}
	d.APIKeys = "k:" + httpx.HashSecret("x")
	if err := d.Validate(); err != nil {
		t.Fatalf("valid: %v", err)
	}
	bad := d
	bad.KafkaBrokers = "nohost"
	bad.BodyBytesMax = 1
	bad.Instances = 0
	bad.AdaptiveBackoffPermille = 1000
	bad.AdaptiveFloorPermille = 0
	bad.AdaptiveRebaseWindows = 0
	bad.AdaptiveRecoveryMs = 0
	bad.AccountSharePermille = 1001
	bad.APIKeys = "k:nothex"
	p := filepath.Join(t.TempDir(), "book.json")
	_ = os.WriteFile(p, []byte(`{"version":"v1","endpoints":{}}`), 0o600)
	bad.PriceBookPath = p
	err := bad.Validate()
	for _, name := range []string{"KAFKA_BROKERS", "ADMITTER_BODY_MAX_BYTES", "ADMITTER_INSTANCES", "ADMITTER_ADAPTIVE_BACKOFF_PERMILLE",
		"ADMITTER_API_KEYS", "TALLY_PRICEBOOK_PATH", "ADMITTER_ADAPTIVE_FLOOR_PERMILLE", "ADMITTER_ADAPTIVE_REBASE_WINDOWS",
		"ADMITTER_ADAPTIVE_RECOVERY_MS", "ADMITTER_ACCOUNT_SHARE_PERMILLE"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
	if _, err := New(bad, nil); err == nil {
		t.Fatal("New accepted bad settings")
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("ADMITTER_INSTANCES", "3")
	t.Setenv("ADMITTER_FOLLOW_PEERS", "false")
	c, err := ConfigFromEnv()
	if err != nil || c.Instances != 3 || c.FollowPeers {
		t.Fatalf("%+v %v", c, err)
	}
	t.Setenv("ADMITTER_INSTANCES", "three")
	if _, err := ConfigFromEnv(); err == nil {
		t.Fatal("bad integer accepted")
	}
}

// TestKeyFileRotation: keys from a file are reloaded on change (polling), without a restart;
// a bad edit keeps the previous keys.
func TestKeyFileRotation(t *testing.T) {
	dir := t.TempDir()
	kf := filepath.Join(dir, "keys")
	if err := os.WriteFile(kf, []byte("# edge keys\nold:"+httpx.HashSecret("old-secret")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.APIKeysFile = kf
	cfg.ListenAddr = "127.0.0.1:0"
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.ln.Close()
	if s.keys.Load().Len() != 1 {
		t.Fatal("file keys not loaded")
	}
	_ = os.WriteFile(kf, []byte("new:"+httpx.HashSecret("new-secret")+"\nold:"+httpx.HashSecret("old-secret")+"\n"), 0o600)
	if !s.keyFileChanged() {
		t.Fatal("change not seen")
	}
	if err := s.ReloadKeys(); err != nil || s.keys.Load().Len() != 2 {
		t.Fatalf("reload: %v", err)
	}
	_ = os.WriteFile(kf, []byte("broken"), 0o600)
	if err := s.ReloadKeys(); err == nil || s.keys.Load().Len() != 2 {
		t.Fatalf("bad file must keep the previous keys: %v", err)
	}
}

// TestNotReadyAnswers503: before the compacted topics are loaded, admits are refused with 503
// rather than decided on empty balances, and /readyz says so.
func TestNotReadyAnswers503(t *testing.T) {
	cfg := DefaultConfig()
	cfg.APIKeys = "k1:" + httpx.HashSecret(testSecret)
	cfg.ListenAddr = "127.0.0.1:0"
	s, err := New(cfg, nil) // never Run: never ready
	if err != nil {
		t.Fatal(err)
	}
	defer s.ln.Close()
	h := s.Handler()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/v1/admit", strings.NewReader(`{"account_id":"a","endpoint":"codex.responses"}`))
	req.Header.Set("Authorization", "Bearer "+testSecret)
	h.ServeHTTP(rec, req)
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), `"unavailable"`) {
		t.Fatalf("admit before ready: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != 503 {
		t.Fatalf("readyz before ready: %d", rec.Code)
	}
}
