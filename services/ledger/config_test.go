package ledger_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/caarlos0/env/v11"

	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/pricebook"
)

// TestDefaultConfigMatchesEnvDefaults: the code-built defaults are the envDefault tags.
func TestDefaultConfigMatchesEnvDefaults(t *testing.T) {
	var fromEnv ledger.Config
	if err := env.ParseWithOptions(&fromEnv, env.Options{Environment: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromEnv, ledger.DefaultConfig()) {
		t.Fatalf("env defaults %+v\ncode defaults %+v", fromEnv, ledger.DefaultConfig())
	}
}

func TestConfigValidateNamesEveryBadSetting(t *testing.T) {
	cfg := ledger.DefaultConfig()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "LEDGER_ADMIN_KEYS") {
		t.Fatalf("missing admin keys accepted: %v", err)
	}
	cfg.AdminKeys = "ops:" + httpx.HashSecret("x")
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults with a key: %v", err)
	}
	cfg.Brokers = "nohost"
	cfg.BatchMax = 0
	cfg.PageMax = -1
	cfg.ParkTimeoutMs = 5
	cfg.AdminKeys = "ops:nothex"
	cfg.TopicPrefix = ""
	cfg.DedupeWindowMs = 999
	cfg.DedupePerAccountMax = 15
	cfg.AccountSharePermille = 1001
	err := cfg.Validate()
	for _, name := range []string{"KAFKA_BROKERS", "LEDGER_BATCH_MAX", "LEDGER_PAGE_MAX", "LEDGER_PARK_TIMEOUT_MS", "LEDGER_ADMIN_KEYS", "TALLY_TOPIC_PREFIX",
		"LEDGER_DEDUPE_WINDOW_MS", "LEDGER_DEDUPE_PER_ACCOUNT_MAX", "LEDGER_ACCOUNT_SHARE_PERMILLE"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
	if _, err := ledger.New(cfg); err == nil {
		t.Fatal("New accepted an invalid config")
	}
}

// TestFoldConfigCarriesAccountShare: LEDGER_ACCOUNT_SHARE_PERMILLE reaches the fold, and the
// default fold config built from the settings is valid.
func TestFoldConfigCarriesAccountShare(t *testing.T) {
	var cfg ledger.Config
	if err := env.ParseWithOptions(&cfg, env.Options{Environment: map[string]string{"LEDGER_ACCOUNT_SHARE_PERMILLE": "250"}}); err != nil {
		t.Fatal(err)
	}
	fc := cfg.FoldConfig(pricebook.Default())
	if fc.AccountSharePermille != 250 {
		t.Fatalf("fold AccountSharePermille %d, want 250", fc.AccountSharePermille)
	}
	if err := ledger.DefaultConfig().FoldConfig(pricebook.Default()).Validate(); err != nil {
		t.Fatalf("default fold config: %v", err)
	}
}

// TestDefaultFoldPolicyIsTheFolds: the settings' default fold policy is the fold's own default
// (fold.DefaultConfig), but for PartitionsTotal (the settings' 4 event partitions), so a
// default is written once in code (and once in its envDefault tag, held to it above).
func TestDefaultFoldPolicyIsTheFolds(t *testing.T) {
	book := pricebook.Default()
	got := ledger.DefaultConfig().FoldConfig(book)
	want := fold.DefaultConfig(book)
	want.PartitionsTotal = ledger.DefaultConfig().PartitionsTotal
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("settings' fold policy %+v\nfold's default %+v", got, want)
	}
}
