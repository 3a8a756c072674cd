package chstore_test

import (
	"context"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
)

// TestClusterSchemaParsesOnTheEngine has the ClickHouse engine (chDB) parse every statement of
// the cluster schema, ON CLUSTER, Replicated and Distributed engines included, and of the
// sink's cluster DDL for schema_migrations: formatQuery fails on a syntax error. Running them
// needs a cluster with Keeper, which this machine does not have.
func TestClusterSchemaParsesOnTheEngine(t *testing.T) {
	_, conn := chtest.Open(t)
	stmts, err := chstore.ClusterStatements(chschema.Migrations, "tally")
	if err != nil {
		t.Fatal(err)
	}
	stmts = append(stmts, chstore.ClusterMigrationsDDL("tally"))
	if len(stmts) < 20 {
		t.Fatalf("only %d statements", len(stmts))
	}
	for _, st := range stmts {
		var formatted string
		if err := conn.QueryRow(context.Background(), "SELECT formatQuery({q:String})", clickhouse.Named("q", st)).Scan(&formatted); err != nil {
			t.Fatalf("the engine does not parse:\n%s\n: %v", st, err)
		}
		if !strings.Contains(formatted, "ON CLUSTER tally") {
			t.Fatalf("parsed without ON CLUSTER: %s", formatted)
		}
	}
	// The check is real: a broken statement is refused.
	var out string
	if err := conn.QueryRow(context.Background(), "SELECT formatQuery({q:String})",
		clickhouse.Named("q", "CREATE TABLE x ON CLUSTER tally (a Int64 ENGINE = Distributed(")).Scan(&out); err == nil {
		t.Fatalf("a broken statement parsed: %s", out)
	}
}
