package chstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// Migration is one NNNN_name.sql file.
type Migration struct {
	Version    uint32
	Name       string
	Checksum   string
	Statements []string
}

var migrationName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.sql$`)

// LoadMigrations reads the NNNN_name.sql files at the root of fsys in version order. Versions
// must be unique. A file holds statements separated by lines ending in ';' (the only split
// rule, so a ';' inside a statement must not end a line); '--' comment lines are dropped.
func LoadMigrations(fsys fs.FS) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("chstore: read migrations: %w", err)
	}
	var out []Migration
	seen := map[uint32]string{}
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if e.IsDir() || m == nil {
			continue
		}
		v, _ := strconv.ParseUint(m[1], 10, 32)
		if prev, dup := seen[uint32(v)]; dup {
			return nil, fmt.Errorf("chstore: migration version %s used by %s and %s", m[1], prev, e.Name())
		}
		seen[uint32(v)] = e.Name()
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("chstore: read %s: %w", e.Name(), err)
		}
		sum := sha256.Sum256(b)
		stmts := SplitStatements(string(b))
		if len(stmts) == 0 {
			return nil, fmt.Errorf("chstore: migration %s has no statements", e.Name())
		}
		out = append(out, Migration{Version: uint32(v), Name: e.Name(), Checksum: hex.EncodeToString(sum[:]), Statements: stmts})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// SplitStatements splits SQL text into statements at lines ending in ';', dropping comment
// lines and blank statements.
func SplitStatements(sql string) []string {
	var out []string
	var cur strings.Builder
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			out = append(out, s)
		}
		cur.Reset()
	}
	for _, line := range strings.Split(sql, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "--") {
			continue
		}
		if strings.HasSuffix(t, ";") {
			cur.WriteString(strings.TrimSuffix(strings.TrimRight(line, " \t\r"), ";"))
			flush()
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	flush()
	return out
}

const migrationsDDL = `CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version`

// Migrate applies, in order, every migration not yet recorded in schema_migrations, and
// records each after all its statements succeed. The statements are idempotent (IF NOT
// EXISTS), so a migration interrupted half-way is simply run again. A recorded migration whose
// file changed is an error: the sink refuses to start on a schema it did not write.
// It returns the versions it applied.
func Migrate(ctx context.Context, conn clickhouse.Conn, fsys fs.FS) ([]uint32, error) {
	return MigrateCluster(ctx, conn, fsys, "")
}

// MigrateCluster is Migrate on the ClickHouse cluster named cluster (CLICKHOUSE_CLUSTER):
// each migration is applied in its cluster form (see ClusterStatements), recorded under the
// file's own version and checksum. "" is a single server: Migrate.
func MigrateCluster(ctx context.Context, conn clickhouse.Conn, fsys fs.FS, cluster string) ([]uint32, error) {
	ms, err := LoadMigrations(fsys)
	if err != nil {
		return nil, err
	}
	ddl := migrationsDDL
	if cluster != "" {
		if ms, err = clusterMigrations(ms, cluster); err != nil {
			return nil, err
		}
		ddl = clusterMigrationsDDL(cluster)
	}
	if err := conn.Exec(ctx, ddl); err != nil {
		return nil, fmt.Errorf("chstore: create schema_migrations: %w", err)
	}
	applied := map[uint32]string{}
	rs, err := conn.Query(ctx, "SELECT version, argMax(checksum, applied_at) FROM schema_migrations GROUP BY version")
	if err != nil {
		return nil, fmt.Errorf("chstore: read schema_migrations: %w", err)
	}
	for rs.Next() {
		var v uint32
		var sum string
		if err := rs.Scan(&v, &sum); err != nil {
			rs.Close()
			return nil, fmt.Errorf("chstore: scan schema_migrations: %w", err)
		}
		applied[v] = sum
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("chstore: read schema_migrations: %w", err)
	}
	var done []uint32
	var errs []error
	for _, m := range ms {
		if sum, ok := applied[m.Version]; ok {
			if sum != m.Checksum {
				errs = append(errs, fmt.Errorf("migration %s: file changed after it was applied (checksum %s, recorded %s)", m.Name, m.Checksum[:12], sum[:min(12, len(sum))]))
			}
			continue
		}
		if len(errs) > 0 {
			break
		}
		for i, stmt := range m.Statements {
			if err := conn.Exec(ctx, stmt); err != nil {
				return done, fmt.Errorf("chstore: migration %s statement %d: %w", m.Name, i+1, err)
			}
		}
		if err := conn.Exec(ctx, "INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)", m.Version, m.Name, m.Checksum); err != nil {
			return done, fmt.Errorf("chstore: record migration %s: %w", m.Name, err)
		}
		done = append(done, m.Version)
	}
	if len(errs) > 0 {
		return done, fmt.Errorf("chstore: %w", errors.Join(errs...))
	}
	return done, nil
}

// Tables are the tables the sink inserts into: an endpoint that limits the sink's user
// to inserts (shared/chembed's RoleWriter) lists these.
var Tables = []string{"usage_events", "ledger_entries", "sink_intents", "schema_migrations"}

// DDL returns every statement other than inserts and reads that Migrate and ApplyRetention
// may send with the migrations in fsys and retentionDays: an endpoint that allows the sink
// only its own DDL lists these.
func DDL(fsys fs.FS, retentionDays int) ([]string, error) {
	ms, err := LoadMigrations(fsys)
	if err != nil {
		return nil, err
	}
	out := []string{migrationsDDL, retentionDDL("usage_events", "", retentionDays)}
	for _, m := range ms {
		out = append(out, m.Statements...)
	}
	return out, nil
}

// retentionDDL sets table's TTL; on is "" or " ON CLUSTER name". The single-server form is
// one of the statements the embedded endpoint lets the sink's writer user run (DDL).
func retentionDDL(table, on string, days int) string {
	return fmt.Sprintf("ALTER TABLE %s%s MODIFY TTL toDateTime(time) + INTERVAL %d DAY", table, on, days)
}

// ApplyRetention sets usage_events' TTL to days, unless it is already that. The old parts are
// not rewritten at once (materialize_ttl_after_modify=0): merges apply the new TTL over time.
func ApplyRetention(ctx context.Context, conn clickhouse.Conn, days int) error {
	return ApplyRetentionCluster(ctx, conn, days, "")
}

// ApplyRetentionCluster is ApplyRetention on the cluster named cluster: the TTL is on each
// shard's usage_events_local, set ON CLUSTER. "" is a single server.
func ApplyRetentionCluster(ctx context.Context, conn clickhouse.Conn, days int, cluster string) error {
	table, on := "usage_events", ""
	if cluster != "" {
		if !clusterName.MatchString(cluster) {
			return fmt.Errorf("chstore: cluster name %q: want 1-64 letters, digits and _", cluster)
		}
		table, on = "usage_events_local", " ON CLUSTER "+cluster
	}
	var engineFull string
	if err := conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = '"+table+"'").Scan(&engineFull); err != nil {
		return fmt.Errorf("chstore: read %s TTL: %w", table, err)
	}
	want := fmt.Sprintf("toIntervalDay(%d)", days)
	if strings.Contains(engineFull, want) {
		return nil
	}
	q := retentionDDL(table, on, days)
	if err := conn.Exec(clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"materialize_ttl_after_modify": 0})), q); err != nil {
		return fmt.Errorf("chstore: set usage_events TTL to %d days: %w", days, err)
	}
	return nil
}
