// Package chtest opens a connection to a fresh database on the test process's embedded
// ClickHouse endpoint, with Tally's migrations applied.
package chtest

import (
	"context"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
)

// Open returns the ClickHouse config of a fresh migrated database and a connection to it.
func Open(tb testing.TB) (chstore.Config, clickhouse.Conn) {
	tb.Helper()
	cfg := Config(tb)
	conn, err := chstore.Open(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := chstore.Migrate(ctx, conn, chschema.Migrations); err != nil {
		tb.Fatal(err)
	}
	return cfg, conn
}

// Config returns the config of a fresh, empty database.
func Config(tb testing.TB) chstore.Config {
	tb.Helper()
	s := chembedtest.Start(tb)
	cfg := chstore.DefaultConfig()
	cfg.Addr, cfg.Database = s.Addr(), chembedtest.NewDatabase(tb, s)
	return cfg
}

// Count runs a single-number query.
func Count(tb testing.TB, conn clickhouse.Conn, q string, args ...any) uint64 {
	tb.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		tb.Fatalf("%s: %v", q, err)
	}
	return n
}
