package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/tallyctl/stack"
	"github.com/tallyhq/tally/shared/events"
)

// run calls the CLI in-process and returns its exit code and output.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code := realMain(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsage(t *testing.T) {
	if code, _, stderr := run(t); code != 2 || !strings.Contains(stderr, "reconcile") {
		t.Fatalf("no args: exit %d, %q", code, stderr)
	}
	if code, _, stderr := run(t, "frobnicate"); code != 2 || !strings.Contains(stderr, "unknown command") {
		t.Fatalf("unknown command: exit %d, %q", code, stderr)
	}
	if code, _, _ := run(t, "grant", "-account", "a"); code != 2 {
		t.Fatalf("grant without amount: exit %d", code)
	}
	if code, _, _ := run(t, "statement", "-account", "a", "-format", "xml"); code != 2 {
		t.Fatalf("bad format: exit %d", code)
	}
}

// TestFinanceCommands drives grant, account, statement, reconcile and sql against a running
// pipeline, through the same environment settings an operator would use.
func TestFinanceCommands(t *testing.T) {
	startCLIStack(t)

	code, out, stderr := run(t, "grant", "-account", "acct_cli", "-micros", "7000000", "-id", "g-cli-1")
	if code != 0 || !strings.Contains(out, "event_id") {
		t.Fatalf("grant: exit %d, %s %s", code, out, stderr)
	}
	code, _, stderr = run(t, "adjust", "-account", "acct_cli", "-micros", "-500000", "-reason", "goodwill reversal", "-id", "adj-cli-1")
	if code != 0 {
		t.Fatalf("adjust: exit %d, %s", code, stderr)
	}
	// The account shows 7.0 − 0.5 credits once the ledger has folded both.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out, stderr = run(t, "account", "-account", "acct_cli")
		var v struct {
			AvailableMicros int64 `json:"available_micros"`
		}
		if code == 0 && json.Unmarshal([]byte(out), &v) == nil && v.AvailableMicros == 6_500_000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("account: exit %d, %s %s", code, out, stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The statement adds up: opening + Σ customer lines = closing = the balance.
	var stmt struct {
		OpeningMicros int64                `json:"opening_micros"`
		ClosingMicros int64                `json:"closing_micros"`
		Entries       []events.LedgerEntry `json:"entries"`
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, out, stderr = run(t, "statement", "-account", "acct_cli", "-format", "json")
		if code != 0 {
			t.Fatalf("statement: exit %d, %s", code, stderr)
		}
		if err := json.Unmarshal([]byte(out), &stmt); err != nil {
			t.Fatalf("statement json: %v\n%s", err, out)
		}
		if stmt.ClosingMicros == 6_500_000 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	sum := stmt.OpeningMicros
	for _, e := range stmt.Entries {
		if e.LedgerAccount == events.LedgerAvailable || e.LedgerAccount == events.LedgerHeld {
			sum += e.AmountMicros
		}
	}
	if stmt.OpeningMicros != 0 || stmt.ClosingMicros != 6_500_000 || sum != stmt.ClosingMicros {
		t.Fatalf("statement: opening %d + entries = %d, closing %d (want 6500000)", stmt.OpeningMicros, sum, stmt.ClosingMicros)
	}
	code, out, _ = run(t, "statement", "-account", "acct_cli")
	if code != 0 || !strings.Contains(out, "opening") || !strings.Contains(out, "closing") {
		t.Fatalf("csv statement: exit %d\n%s", code, out)
	}

	// Reconcile: replay, live ledger and ClickHouse agree (once the sink has the journal).
	deadline = time.Now().Add(60 * time.Second)
	for {
		code, out, stderr = run(t, "reconcile")
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reconcile: exit %d\n%s\n%s", code, out, stderr)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !strings.Contains(out, "reconcile: OK") {
		t.Fatalf("reconcile output: %s", out)
	}
	// When the live ledger cannot be read (its admin API refuses the token), reconcile fails
	// rather than reporting agreement.
	t.Setenv("TALLY_ADMIN_TOKEN", "wrong-token")
	if code, _, _ := run(t, "reconcile"); code == 0 {
		t.Fatal("reconcile with a wrong admin token succeeded")
	}

	// sql prints a table with parameters bound, never concatenated.
	code, out, stderr = run(t, "sql", "-format", "csv", "-param", "acct=acct_cli",
		"SELECT count() AS n FROM ledger_entries FINAL WHERE account_id = {acct:String}")
	if code != 0 || !strings.Contains(out, "n") {
		t.Fatalf("sql: exit %d, %s %s", code, out, stderr)
	}
	code, out, _ = run(t, "sql", "-format", "csv", "-param", "acct=x' OR 1=1 --",
		"SELECT count() AS n FROM ledger_entries FINAL WHERE account_id = {acct:String}")
	if code != 0 || !strings.Contains(out, "\n0") {
		t.Fatalf("sql injection attempt: exit %d, %q", code, out)
	}
}

// tallyctl run keeps data, so it refuses to start on the in-memory broker unless asked for
// an ephemeral demo; the stack refuses a data directory on it too.
func TestRunNeedsRealKafkaOrEphemeral(t *testing.T) {
	t.Setenv("KAFKA_BROKERS", "")
	t.Setenv("TALLY_DATA_DIR", t.TempDir())
	code, _, stderr := run(t, "run")
	if code != 2 || !strings.Contains(stderr, "needs a real Kafka") || !strings.Contains(stderr, "-ephemeral") {
		t.Fatalf("run without brokers: exit %d, %q", code, stderr)
	}
	_, err := stack.Start(context.Background(), stack.Config{DataDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "embedded broker keeps nothing") {
		t.Fatalf("stack with a data directory on kfake: %v", err)
	}
}
