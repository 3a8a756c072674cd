package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/services/tallyctl/stack"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// noStack points tallyctl at a data directory with no running stack, so that nothing is
// filled in from one.
func noStack(t *testing.T) {
	t.Setenv("TALLY_DATA_DIR", t.TempDir())
}

// TestCustomerKeyCommand: customer-key appends one parseable entry per key to a 0600 file
// (created if missing, made 0600 if it was not), prints only the token, and refuses bad
// flags and a repeated id without touching the file.
func TestCustomerKeyCommand(t *testing.T) {
	noStack(t)
	secret := strings.Repeat("h", 32)
	t.Setenv("TALLY_KEY_HASH_SECRET", secret)
	file := filepath.Join(t.TempDir(), "customer-keys")

	code, tok1, stderr := run(t, "customer-key", "-account", "acct_1", "-file", file)
	tok1 = strings.TrimSpace(tok1)
	if code != 0 || !strings.HasPrefix(tok1, api.CustomerKeyPrefix) || len(tok1) != len(api.CustomerKeyPrefix)+32 {
		t.Fatalf("exit %d, token %q, %s", code, tok1, stderr)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keys file: %v, mode %v", err, st.Mode())
	}
	// An existing file that is too open is made 0600.
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	code, tok2, stderr := run(t, "customer-key", "-org", "org_9", "-id", "billing-view", "-file", file)
	tok2 = strings.TrimSpace(tok2)
	if code != 0 || tok2 == tok1 {
		t.Fatalf("second key: exit %d, %q, %s", code, tok2, stderr)
	}
	if st, _ := os.Stat(file); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v after append, want 0600", st.Mode())
	}
	b, _ := os.ReadFile(file)
	if strings.Contains(string(b), tok1) || strings.Contains(string(b), tok2) {
		t.Fatal("a token was written to the keys file")
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], ":account=acct_1") || !strings.HasPrefix(lines[1], "billing-view:hmac:") ||
		!strings.HasSuffix(lines[1], ":org=org_9") {
		t.Fatalf("keys file:\n%s", b)
	}
	// The ledger reads the file and authenticates both tokens with their scopes.
	keys, err := api.LoadCustomerKeys(file, []byte(secret), nil)
	if err != nil || keys.Len() != 2 {
		t.Fatalf("ledger reads the file: %v", err)
	}
	for tok, want := range map[string]api.Scope{tok1: {AccountID: "acct_1"}, tok2: {OrganizationID: "org_9"}} {
		req, _ := http.NewRequest("GET", "/", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		if sc, err := keys.Authenticate(req); err != nil || sc != want {
			t.Fatalf("token %s: %+v %v, want %+v", tok, sc, err, want)
		}
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"no scope", []string{"-file", file}},
		{"both scopes", []string{"-account", "a", "-org", "o", "-file", file}},
		{"bad account id", []string{"-account", "a b", "-file", file}},
		{"id with a colon", []string{"-account", "a", "-id", "x:y", "-file", file}},
		{"no file", []string{"-account", "a"}},
	} {
		if code, _, _ := run(t, append([]string{"customer-key"}, c.args...)...); code != 2 {
			t.Errorf("%s: exit %d, want 2", c.name, code)
		}
	}
	if code, out, _ := run(t, "customer-key", "-account", "a", "-id", "billing-view", "-file", file); code != 1 || out != "" {
		t.Errorf("repeated id: exit %d, printed %q", code, out)
	}
	t.Setenv("TALLY_KEY_HASH_SECRET", "short")
	if code, out, _ := run(t, "customer-key", "-account", "a", "-file", file); code != 1 || out != "" {
		t.Errorf("short secret: exit %d, printed %q", code, out)
	}
	if after, _ := os.ReadFile(file); string(after) != string(b) {
		t.Fatalf("a refused key changed the file:\n%s", after)
	}
}

// TestCustomerKeyOnStack: a key made with customer-key against the stack's keys file reads
// its account through the ledger's customer API once the ledger has reloaded the file.
func TestCustomerKeyOnStack(t *testing.T) {
	noStack(t)
	kc := kafkatest.Start(t)
	ch := chembedtest.Start(t)
	db := chembedtest.NewDatabase(t, ch)
	file := filepath.Join(t.TempDir(), "customer-keys")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Config{Brokers: kc.Brokers, TopicPrefix: kc.Prefix, Partitions: kafkatest.Partitions,
		ClickHouseAddr: ch.Addr(), ClickHouseDatabase: db, CustomerKeysFile: file, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 0 {
		t.Fatalf("the stack's customer keys file: %v %v", err, fi)
	}
	t.Setenv("TALLY_KEY_HASH_SECRET", st.KeyHashSecret)
	code, tok, stderr := run(t, "customer-key", "-account", "acct_c", "-file", file)
	tok = strings.TrimSpace(tok)
	if code != 0 {
		t.Fatalf("customer-key: exit %d, %s", code, stderr)
	}
	grant, _ := http.NewRequest("POST", st.LedgerURL+"/v1/accounts/acct_c/grants", strings.NewReader(`{"amount_micros":2000000}`))
	grant.Header.Set("Authorization", "Bearer "+st.AdminToken)
	grant.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(grant); err != nil || resp.StatusCode != 202 {
		t.Fatalf("grant: %v %v", err, resp)
	}
	get := func(path, token string) (int, []byte) {
		req, _ := http.NewRequest("GET", st.LedgerURL+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	deadline := time.Now().Add(60 * time.Second)
	var a api.CustomerAccount
	for {
		code, b := get("/v1/customer/accounts/acct_c", tok)
		if code == 200 && json.Unmarshal(b, &a) == nil && a.AvailableMicros == 2_000_000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("customer read never succeeded: %d %s", code, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, b := get("/v1/customer/accounts/acct_other", tok); code != 403 {
		t.Fatalf("another account: %d %s", code, b)
	}
	if code, b := get("/v1/accounts/acct_c", tok); code != 403 {
		t.Fatalf("admin route with a customer key: %d %s", code, b)
	}
	if code, b := get("/v1/customer/accounts/acct_c", st.APIKey); code != 403 || !strings.Contains(string(b), httpx.CodeForbidden) {
		t.Fatalf("customer route with the edge key: %d %s", code, b)
	}
}
