// Package chstore is the sink's ClickHouse adapter: connection settings, the migration
// runner, and the Store that writes batches through clickhouse-go/v2
// PrepareBatch/Append/Send with an insert_deduplication_token per batch.
package chstore

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/tallyhq/tally/shared/bounds"
	"github.com/tallyhq/tally/shared/tlsx"
)

// Protocols accepted by CLICKHOUSE_PROTOCOL.
const (
	ProtocolNative = "native"
	ProtocolHTTP   = "http"
)

// Config is the ClickHouse connection. Every field is an environment setting.
type Config struct {
	// Addr is host:port of ClickHouse (CLICKHOUSE_ADDR, default 127.0.0.1:8123, the embedded
	// endpoint's HTTP port; a server's native port is 9000).
	Addr string `env:"CLICKHOUSE_ADDR" envDefault:"127.0.0.1:8123"`
	// Protocol is native or http (CLICKHOUSE_PROTOCOL, default http). The embedded endpoint
	// speaks only http.
	Protocol string `env:"CLICKHOUSE_PROTOCOL" envDefault:"http"`
	// Database holds every Tally table (CLICKHOUSE_DATABASE, default "default").
	Database string `env:"CLICKHOUSE_DATABASE" envDefault:"default"`
	// User and Password authenticate (CLICKHOUSE_USER default "default", CLICKHOUSE_PASSWORD
	// default "").
	User     string `env:"CLICKHOUSE_USER" envDefault:"default"`
	Password string `env:"CLICKHOUSE_PASSWORD"`
	// DialTimeoutMs bounds connecting (CLICKHOUSE_DIAL_TIMEOUT_MS, default 5000, 1..60000).
	DialTimeoutMs int `env:"CLICKHOUSE_DIAL_TIMEOUT_MS" envDefault:"5000"`
	// ConnsMax bounds open connections (CLICKHOUSE_CONNS_MAX, default 4, 1..64).
	ConnsMax int `env:"CLICKHOUSE_CONNS_MAX" envDefault:"4"`
	// QueryTimeoutMs bounds one query or insert (CLICKHOUSE_QUERY_TIMEOUT_MS, default 30000,
	// 100..3600000).
	QueryTimeoutMs int `env:"CLICKHOUSE_QUERY_TIMEOUT_MS" envDefault:"30000"`
	// Cluster is the ClickHouse cluster to create the schema on (CLICKHOUSE_CLUSTER, default ""
	// = a single server; 1-64 letters, digits and _): the sink applies the cluster form of the
	// migrations (Replicated tables per shard, Distributed tables over them, ON CLUSTER) and
	// inserts through the Distributed tables synchronously (distributed_foreground_insert=1),
	// so each shard's deduplication sees the batch's token.
	Cluster string `env:"CLICKHOUSE_CLUSTER"`
	// TLS is CLICKHOUSE_TLS_*: TLS to ClickHouse (CA, optional client certificate), off by
	// default (see package tlsx).
	TLS tlsx.ClientConfig `envPrefix:"CLICKHOUSE_TLS_"`
}

// DefaultConfig returns the defaults above, for code-built configurations.
func DefaultConfig() Config {
	return Config{Addr: "127.0.0.1:8123", Protocol: ProtocolHTTP, Database: "default", User: "default",
		DialTimeoutMs: 5000, ConnsMax: 4, QueryTimeoutMs: 30000}
}

// Validate reports every invalid setting, joined, by variable name.
func (c Config) Validate() error {
	var errs []error
	if _, port, err := net.SplitHostPort(c.Addr); err != nil || port == "" {
		errs = append(errs, fmt.Errorf("CLICKHOUSE_ADDR: want host:port, got %q", c.Addr))
	}
	if c.Protocol != ProtocolNative && c.Protocol != ProtocolHTTP {
		errs = append(errs, fmt.Errorf("CLICKHOUSE_PROTOCOL: want native or http, got %q", c.Protocol))
	}
	if c.Database == "" || strings.ContainsAny(c.Database, "`\"' \t\n") {
		errs = append(errs, fmt.Errorf("CLICKHOUSE_DATABASE: want a plain name, got %q", c.Database))
	}
	if err := bounds.Check("CLICKHOUSE_DIAL_TIMEOUT_MS", int64(c.DialTimeoutMs), 1, 60000); err != nil {
		errs = append(errs, err)
	}
	if err := bounds.Check("CLICKHOUSE_CONNS_MAX", int64(c.ConnsMax), 1, 64); err != nil {
		errs = append(errs, err)
	}
	if err := bounds.Check("CLICKHOUSE_QUERY_TIMEOUT_MS", int64(c.QueryTimeoutMs), 100, 3600000); err != nil {
		errs = append(errs, err)
	}
	if c.User == "" && c.Password != "" {
		errs = append(errs, errors.New("CLICKHOUSE_PASSWORD: set without CLICKHOUSE_USER"))
	}
	if c.Cluster != "" && !clusterName.MatchString(c.Cluster) {
		errs = append(errs, fmt.Errorf("CLICKHOUSE_CLUSTER: want 1-64 letters, digits and _, got %q", c.Cluster))
	}
	if err := c.TLS.ValidateEnv("CLICKHOUSE_TLS_"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Open connects to ClickHouse and pings it.
func Open(c Config) (clickhouse.Conn, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	tc, err := c.TLS.Build()
	if err != nil {
		return nil, fmt.Errorf("chstore: CLICKHOUSE_TLS_*: %w", err)
	}
	proto := clickhouse.Native
	if c.Protocol == ProtocolHTTP {
		proto = clickhouse.HTTP
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:     []string{c.Addr},
		Protocol: proto,
		Auth:     clickhouse.Auth{Database: c.Database, Username: c.User, Password: c.Password},
		TLS:      tc, // nil = plaintext
		// LZ4 on the wire: batches of JSON-ish strings compress several-fold.
		Compression:     &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
		DialTimeout:     time.Duration(c.DialTimeoutMs) * time.Millisecond,
		ReadTimeout:     time.Duration(c.QueryTimeoutMs) * time.Millisecond,
		MaxOpenConns:    c.ConnsMax,
		MaxIdleConns:    c.ConnsMax,
		ConnMaxLifetime: time.Hour,
		Settings:        clusterSettings(c.Cluster),
	})
	if err != nil {
		return nil, fmt.Errorf("chstore: open %s: %w", c.Addr, err)
	}
	return conn, nil
}

// clusterSettings are the connection's settings on a cluster: synchronous Distributed
// inserts, so an insert succeeds only once every shard has its rows (and deduplicated them
// by the batch's token). nil on a single server.
func clusterSettings(cluster string) clickhouse.Settings {
	if cluster == "" {
		return nil
	}
	return clickhouse.Settings{"distributed_foreground_insert": 1}
}
