package chstore

import (
	"fmt"
	"io/fs"
	"regexp"
	"strings"
)

// The cluster variant of the schema, for a ClickHouse cluster (shards of replicas) instead of
// one server. It is derived from the same migrations, statement by statement, so the two
// cannot drift apart:
//
//   - each table T becomes T_local ON CLUSTER, on the Replicated form of its engine
//     (ReplicatedReplacingMergeTree, ...), replicated through ClickHouse Keeper at
//     /clickhouse/tables/{shard}/{database}/T_local, plus T ON CLUSTER, a Distributed table
//     over the T_local of every shard, sharded by account (cityHash64(account_id)), so all of
//     an account's rows, rollups and journal lines live on one shard and per-account
//     aggregates, FINAL and the rollups stay exact per shard;
//   - each materialized view reads and writes the shard's local tables (T_local);
//   - views, ALTERs and DROPs run ON CLUSTER; views read the Distributed tables; an ALTER of
//     columns changes the local and the Distributed table alike (the columns only, when the
//     ALTER also appends them to the local table's sorting key with MODIFY ORDER BY).
//
// The sink writes to the Distributed tables; for its exactly-once scheme the inserts must be
// synchronous (distributed_foreground_insert = 1 in the sink user's profile) so each shard's
// replicated deduplication sees the batch's insert_deduplication_token.

// clusterShardKey is the sharding key of each table (default cityHash64(account_id)).
var clusterShardKey = map[string]string{
	"sink_intents": "cityHash64(consumer_group, topic, partition)",
}

var (
	reCreateTable = regexp.MustCompile(`(?is)^CREATE TABLE IF NOT EXISTS (\w+)\s*(\(.*)$`)
	reEngine      = regexp.MustCompile(`(?m)^ENGINE = (\w*MergeTree)\b(\(\))?`)
	reCreateMV    = regexp.MustCompile(`(?is)^CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+) AS\s(.*)$`)
	reCreateView  = regexp.MustCompile(`(?is)^CREATE (OR REPLACE VIEW|VIEW IF NOT EXISTS) (\w+) AS\s(.*)$`)
	reAlterTable  = regexp.MustCompile(`(?is)^ALTER TABLE (\w+)\s+(.*)$`)
	// reColumnAlter is an ALTER whose every command changes columns: the Distributed table,
	// which has its own column list, needs it too.
	reColumnAlter = regexp.MustCompile(`(?is)^((ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN\b[^,]*(,\s*|$))+$`)
	// reSortingKeyTail is a trailing MODIFY ORDER BY: it appends columns added by the same ALTER
	// to the sorting key of the shard's table; the Distributed table, which has none, takes
	// the column commands before it.
	reSortingKeyTail = regexp.MustCompile(`(?is)^(.*?),\s*MODIFY ORDER BY\s*\([^()]*\)$`)
	reDrop           = regexp.MustCompile(`(?i)^DROP (VIEW|TABLE) IF EXISTS (\w+)$`)
	reSource         = regexp.MustCompile(`(?i)\b(FROM|JOIN)\s+(\w+)\b`)
)

// ClusterStatements returns the cluster variant of every migration in fsys, in order, for
// the cluster named cluster (as in the servers' remote_servers; the {shard} and {replica}
// macros must be defined on every server).
func ClusterStatements(fsys fs.FS, cluster string) ([]string, error) {
	ms, err := LoadMigrations(fsys)
	if err != nil {
		return nil, err
	}
	if ms, err = clusterMigrations(ms, cluster); err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.Statements...)
	}
	return out, nil
}

var clusterName = regexp.MustCompile(`^\w{1,64}$`)

// clusterMigrations rewrites each migration's statements into their cluster form; versions,
// names and checksums stay those of the files.
func clusterMigrations(ms []Migration, cluster string) ([]Migration, error) {
	if !clusterName.MatchString(cluster) {
		return nil, fmt.Errorf("chstore: cluster name %q: want 1-64 letters, digits and _", cluster)
	}
	on := " ON CLUSTER " + cluster
	tables := map[string]bool{}
	out := make([]Migration, len(ms))
	for i, m := range ms {
		out[i] = m
		out[i].Statements = nil
		add := func(s string) { out[i].Statements = append(out[i].Statements, s) }
		for _, st := range m.Statements {
			switch {
			case reCreateTable.MatchString(st):
				g := reCreateTable.FindStringSubmatch(st)
				name, body := g[1], g[2]
				em := reEngine.FindStringSubmatch(body)
				if em == nil {
					return nil, fmt.Errorf("chstore: %s: table %s: no *MergeTree engine to replicate", m.Name, name)
				}
				local := name + "_local"
				engine := fmt.Sprintf("ENGINE = Replicated%s('/clickhouse/tables/{shard}/{database}/%s', '{replica}')", em[1], local)
				add("CREATE TABLE IF NOT EXISTS " + local + on + "\n" + reEngine.ReplaceAllLiteralString(body, engine))
				key := clusterShardKey[name]
				if key == "" {
					key = "cityHash64(account_id)"
				}
				add(fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s%s AS %s\nENGINE = Distributed(%s, currentDatabase(), %s, %s)",
					name, on, local, cluster, local, key))
				tables[name] = true
			case reCreateMV.MatchString(st):
				g := reCreateMV.FindStringSubmatch(st)
				if !tables[g[2]] {
					return nil, fmt.Errorf("chstore: %s: materialized view %s writes to %s, not a table", m.Name, g[1], g[2])
				}
				add(fmt.Sprintf("CREATE MATERIALIZED VIEW IF NOT EXISTS %s%s TO %s_local AS\n%s", g[1], on, g[2], localSources(g[3], tables)))
			case reCreateView.MatchString(st):
				g := reCreateView.FindStringSubmatch(st)
				head := "CREATE VIEW IF NOT EXISTS "
				if strings.EqualFold(g[1], "OR REPLACE VIEW") {
					head = "CREATE OR REPLACE VIEW "
				}
				add(head + g[2] + on + " AS\n" + g[3])
			case reAlterTable.MatchString(st):
				g := reAlterTable.FindStringSubmatch(st)
				if !tables[g[1]] {
					return nil, fmt.Errorf("chstore: %s: ALTER of %s, not a table", m.Name, g[1])
				}
				add("ALTER TABLE " + g[1] + "_local" + on + " " + g[2])
				cmds := strings.TrimSpace(g[2])
				if k := reSortingKeyTail.FindStringSubmatch(cmds); k != nil {
					cmds = strings.TrimSpace(k[1])
				}
				if reColumnAlter.MatchString(cmds) {
					add("ALTER TABLE " + g[1] + on + " " + cmds)
				}
			case reDrop.MatchString(st):
				g := reDrop.FindStringSubmatch(st)
				add("DROP " + strings.ToUpper(g[1]) + " IF EXISTS " + g[2] + on)
				if tables[g[2]] {
					add("DROP TABLE IF EXISTS " + g[2] + "_local" + on)
					delete(tables, g[2])
				}
			default:
				return nil, fmt.Errorf("chstore: %s: no cluster form for %.60q", m.Name, st)
			}
		}
	}
	return out, nil
}

// clusterMigrationsDDL is schema_migrations on a cluster: one replicated table whose rows
// every server holds (one Keeper path for all shards), so the record is the same everywhere.
func clusterMigrationsDDL(cluster string) string {
	return strings.Replace(strings.Replace(migrationsDDL, "schema_migrations", "schema_migrations ON CLUSTER "+cluster, 1),
		"ENGINE = ReplacingMergeTree", "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{database}/schema_migrations', '{replica}')", 1)
}

// localSources points a materialized view's FROM and JOIN at the shard's local tables: a
// materialized view fires on inserts into the table it reads, which on a cluster is the
// local table each Distributed insert lands in.
func localSources(sel string, tables map[string]bool) string {
	re := reSource
	return re.ReplaceAllStringFunc(sel, func(s string) string {
		g := re.FindStringSubmatch(s)
		if !tables[g[2]] {
			return s
		}
		return g[1] + " " + g[2] + "_local"
	})
}
