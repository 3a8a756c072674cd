// Package chschema embeds Tally's ClickHouse schema: the ordered migrations (NNNN_name.sql,
// applied by the sink at start-up and recorded in schema_migrations) and the analysts'
// queries (queries/*.sql, one named question each, parameters in {name:Type} syntax).
package chschema

import "embed"

// Migrations holds the NNNN_name.sql files at the root of this folder.
//
//go:embed *.sql
var Migrations embed.FS

// Queries holds queries/*.sql.
//
//go:embed queries/*.sql
var Queries embed.FS
