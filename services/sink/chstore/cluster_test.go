package chstore

import (
	"strings"
	"testing"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
)

// TestClusterSchemaShape checks the cluster variant's form: every table is a Replicated
// engine on {shard}/{replica} with a Distributed table over it, every statement runs ON
// CLUSTER, and the materialized views read and write local tables.
func TestClusterSchemaShape(t *testing.T) {
	stmts, err := ClusterStatements(chschema.Migrations, "tally")
	if err != nil {
		t.Fatal(err)
	}
	single, _ := LoadMigrations(chschema.Migrations)
	var tables []string
	for _, m := range single {
		for _, st := range m.Statements {
			if g := reCreateTable.FindStringSubmatch(st); g != nil {
				tables = append(tables, g[1])
			}
		}
	}
	all := strings.Join(stmts, "\n;\n")
	for _, tb := range tables {
		for _, want := range []string{
			"CREATE TABLE IF NOT EXISTS " + tb + "_local ON CLUSTER tally",
			"'/clickhouse/tables/{shard}/{database}/" + tb + "_local', '{replica}'",
			"CREATE TABLE IF NOT EXISTS " + tb + " ON CLUSTER tally AS " + tb + "_local\nENGINE = Distributed(tally, currentDatabase(), " + tb + "_local, ",
		} {
			if !strings.Contains(all, want) {
				t.Errorf("cluster schema lacks %q", want)
			}
		}
	}
	for _, st := range stmts {
		if !strings.Contains(st, " ON CLUSTER tally") {
			t.Errorf("not ON CLUSTER: %.80q", st)
		}
		if strings.Contains(st, "MATERIALIZED VIEW") && (strings.Contains(st, "FROM usage_events\n") || !strings.Contains(st, "_local")) {
			t.Errorf("materialized view not on local tables: %s", st)
		}
		if strings.Contains(st, "ENGINE = ReplacingMergeTree") || strings.Contains(st, "ENGINE = MergeTree") {
			t.Errorf("unreplicated engine: %.120q", st)
		}
	}
	// A column ALTER (0010, 0011) changes the shard's table and the Distributed one, which has its
	// own column list; an index ALTER (0008) only the shard's.
	for _, want := range []string{
		"ALTER TABLE usage_events_local ON CLUSTER tally ADD COLUMN IF NOT EXISTS paid_allowance_micros",
		"ALTER TABLE usage_events ON CLUSTER tally ADD COLUMN IF NOT EXISTS paid_allowance_micros",
		"ALTER TABLE usage_events_local ON CLUSTER tally ADD COLUMN IF NOT EXISTS funding_account_id LowCardinality(String) DEFAULT '' AFTER account_id",
		"ALTER TABLE usage_events ON CLUSTER tally ADD COLUMN IF NOT EXISTS funding_account_id LowCardinality(String) DEFAULT '' AFTER account_id",
		"CREATE OR REPLACE VIEW requests_credits_v ON CLUSTER tally AS",
		// 0012: a column added and appended to the sorting key in one ALTER: the shard's
		// table takes both, the Distributed table (no sorting key) the column only.
		"ALTER TABLE usage_1m_local ON CLUSTER tally ADD COLUMN IF NOT EXISTS funding_account_id LowCardinality(String) AFTER account_id, MODIFY ORDER BY (account_id, endpoint, minute, funding_account_id)",
		"ALTER TABLE usage_1m ON CLUSTER tally ADD COLUMN IF NOT EXISTS funding_account_id LowCardinality(String) AFTER account_id",
		"CREATE MATERIALIZED VIEW IF NOT EXISTS usage_1m_mv ON CLUSTER tally TO usage_1m_local",
		"ALTER TABLE sink_intents_local ON CLUSTER tally ADD INDEX",
		// 0013: the journal's project column on both tables; the view reads the Distributed one.
		"ALTER TABLE ledger_entries_local ON CLUSTER tally ADD COLUMN IF NOT EXISTS project_id String DEFAULT '' AFTER request_id",
		"ALTER TABLE ledger_entries ON CLUSTER tally ADD COLUMN IF NOT EXISTS project_id String DEFAULT '' AFTER request_id",
		"CREATE OR REPLACE VIEW ledger_entries_v ON CLUSTER tally AS SELECT *, toDecimal64(toDecimal128(amount_micros, 6) / 1000000, 6) AS amount_credits FROM ledger_entries FINAL",
	} {
		if !strings.Contains(strings.Join(strings.Fields(all), " "), want) {
			t.Errorf("cluster schema lacks %q", want)
		}
	}
	if strings.Contains(all, "ALTER TABLE usage_1m ON CLUSTER tally ADD COLUMN IF NOT EXISTS funding_account_id LowCardinality(String) AFTER account_id,") {
		t.Error("a sorting key ALTER was sent to the Distributed table")
	}
	if strings.Contains(all, "ALTER TABLE sink_intents ON CLUSTER") {
		t.Error("an index ALTER was sent to the Distributed table")
	}
	if _, err := ClusterStatements(chschema.Migrations, "bad name"); err == nil {
		t.Error("a cluster name with a space was accepted")
	}
}

// The cluster form of schema_migrations is replicated on every server under one Keeper path.
func TestClusterMigrationsTable(t *testing.T) {
	ddl := clusterMigrationsDDL("tally")
	for _, want := range []string{"schema_migrations ON CLUSTER tally", "ReplicatedReplacingMergeTree('/clickhouse/tables/{database}/schema_migrations', '{replica}')"} {
		if !strings.Contains(ddl, want) {
			t.Errorf("%s lacks %q", ddl, want)
		}
	}
}
