package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/services/tallyctl/stack"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// startCLIStack runs a pipeline and points tallyctl's environment at it.
func startCLIStack(t *testing.T) *stack.Stack {
	t.Helper()
	return startCLIStackWith(t, stack.Config{})
}

// startCLIStackWith starts the pipeline with cfg (its broker, ClickHouse and logger filled
// in: a fresh topic prefix and database) and points tallyctl's settings at it.
func startCLIStackWith(t *testing.T, cfg stack.Config) *stack.Stack {
	t.Helper()
	kc := kafkatest.Start(t)
	ch := chembedtest.Start(t)
	db := chembedtest.NewDatabase(t, ch)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg.Brokers, cfg.TopicPrefix, cfg.Partitions = kc.Brokers, kc.Prefix, kafkatest.Partitions
	cfg.ClickHouseAddr, cfg.ClickHouseDatabase, cfg.Logger = ch.Addr(), db, slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := stack.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	for k, v := range map[string]string{
		"KAFKA_BROKERS": strings.Join(kc.Brokers, ","), "TALLY_TOPIC_PREFIX": kc.Prefix,
		"TALLY_LEDGER_URL": st.LedgerURL, "TALLY_ADMIN_TOKEN": st.AdminToken, "TALLY_KEY_HASH_SECRET": st.KeyHashSecret,
		"CLICKHOUSE_ADDR": ch.Addr(), "CLICKHOUSE_PROTOCOL": "http", "CLICKHOUSE_DATABASE": db,
	} {
		t.Setenv(k, v)
	}
	return st
}

// accountUntil reads the account with tallyctl until ok holds for it.
func accountUntil(t *testing.T, id string, what string, ok func(view.Account) bool) view.Account {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out, stderr := run(t, "account", "-account", id)
		var v view.Account
		if code == 0 && json.Unmarshal([]byte(out), &v) == nil && ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("account %s: %s never seen: exit %d, %s %s", id, what, code, out, stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAccountAndGrantDefaults: `tallyctl account -tier x` changes the tier only (a suspended
// account stays suspended, its priority class stays), and a grant without a priority gets
// the same default through tallyctl and through the ledger API.
func TestAccountAndGrantDefaults(t *testing.T) {
	st := startCLIStack(t)
	if code, out, stderr := run(t, "account", "-account", "acct_s", "-tier", "pro", "-priority", "batch", "-suspended"); code != 0 {
		t.Fatalf("set: exit %d, %s %s", code, out, stderr)
	}
	accountUntil(t, "acct_s", "tier pro, suspended", func(v view.Account) bool { return v.Tier == "pro" && v.Suspended })
	if code, out, stderr := run(t, "account", "-account", "acct_s", "-tier", "enterprise"); code != 0 {
		t.Fatalf("tier change: exit %d, %s %s", code, out, stderr)
	}
	v := accountUntil(t, "acct_s", "tier enterprise", func(v view.Account) bool { return v.Tier == "enterprise" })
	if !v.Suspended || v.Priority != events.PriorityBatch {
		t.Fatalf("a tier change lifted the suspension or reset the priority: %+v", v)
	}
	// Lifting it is explicit.
	if code, out, stderr := run(t, "account", "-account", "acct_s", "-suspended=false"); code != 0 {
		t.Fatalf("unsuspend: exit %d, %s %s", code, out, stderr)
	}
	v = accountUntil(t, "acct_s", "not suspended", func(v view.Account) bool { return !v.Suspended })
	if v.Tier != "enterprise" || v.Priority != events.PriorityBatch {
		t.Fatalf("unsuspending changed tier or priority: %+v", v)
	}

	// Grant priority: tallyctl without -priority, and the API without "priority".
	if code, out, stderr := run(t, "grant", "-account", "acct_g", "-micros", "1000", "-id", "g-cli"); code != 0 {
		t.Fatalf("grant: exit %d, %s %s", code, out, stderr)
	}
	var a adminFlags
	a.ledgerURL, a.token, a.timeout = st.LedgerURL, st.AdminToken, 10*time.Second
	if err := a.call(context.Background(), "POST", "/v1/accounts/acct_g/grants", map[string]any{"grant_id": "g-api", "amount_micros": 1000}, io.Discard); err != nil {
		t.Fatal(err)
	}
	v = accountUntil(t, "acct_g", "two grants", func(v view.Account) bool { return len(v.Grants) == 2 })
	for _, g := range v.Grants {
		if g.Priority != events.DefaultGrantPriority {
			t.Fatalf("grant %s: priority %d, want the default %d (grants %+v)", g.GrantID, g.Priority, events.DefaultGrantPriority, v.Grants)
		}
	}
}

// TestOrganizationCommands: `tallyctl account -funding-account` makes a project funded by an
// organization (keeping its tier), `tallyctl budget` sets and removes the organization's
// monthly budget for it, and a command line giving both or neither of -micros and -remove is
// refused before any call.
func TestOrganizationCommands(t *testing.T) {
	startCLIStack(t)
	if code, out, stderr := run(t, "grant", "-account", "org_cli", "-micros", "1000000", "-id", "g-org"); code != 0 {
		t.Fatalf("grant: exit %d, %s %s", code, out, stderr)
	}
	accountUntil(t, "org_cli", "the grant", func(v view.Account) bool { return v.AvailableMicros == 1_000_000 })
	if code, out, stderr := run(t, "account", "-account", "proj_cli", "-tier", "pro"); code != 0 {
		t.Fatalf("account: exit %d, %s %s", code, out, stderr)
	}
	accountUntil(t, "proj_cli", "tier pro", func(v view.Account) bool { return v.Tier == "pro" })
	if code, out, stderr := run(t, "account", "-account", "proj_cli", "-funding-account", "org_cli", "-organization", "org_cli"); code != 0 {
		t.Fatalf("funding: exit %d, %s %s", code, out, stderr)
	}
	v := accountUntil(t, "proj_cli", "funded by org_cli", func(v view.Account) bool { return v.FundingAccountID == "org_cli" })
	if v.Tier != "pro" || v.OrganizationID != "org_cli" {
		t.Fatalf("the funding change lost the tier or the organization: %+v", v)
	}
	if code, out, stderr := run(t, "budget", "-account", "org_cli", "-project", "proj_cli", "-micros", "2500000"); code != 0 {
		t.Fatalf("budget: exit %d, %s %s", code, out, stderr)
	}
	accountUntil(t, "org_cli", "the budget", func(v view.Account) bool {
		return len(v.Projects) == 1 && v.Projects[0].ProjectID == "proj_cli" && v.Projects[0].BudgetMicros == 2_500_000
	})
	if code, out, stderr := run(t, "budget", "-account", "org_cli", "-project", "proj_cli", "-remove"); code != 0 {
		t.Fatalf("remove: exit %d, %s %s", code, out, stderr)
	}
	accountUntil(t, "org_cli", "no budget", func(v view.Account) bool { return len(v.Projects) == 0 })
	for _, args := range [][]string{
		{"budget", "-account", "org_cli", "-project", "proj_cli"},
		{"budget", "-account", "org_cli", "-project", "proj_cli", "-micros", "5", "-remove"},
		{"budget", "-project", "proj_cli", "-micros", "5"},
	} {
		if code, _, stderr := run(t, args...); code != 2 {
			t.Fatalf("%v: exit %d (%s), want 2 (usage)", args, code, stderr)
		}
	}
}
