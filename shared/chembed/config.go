package chembed

import (
	"errors"
	"fmt"
	"time"

	"github.com/tallyhq/tally/shared/httpx"
)

// Defaults and bounds of Config. A zero field takes its default.
const (
	// DefaultMaxBodyBytes is the default request body bound (256 MiB).
	DefaultMaxBodyBytes int64 = 256 << 20
	// DefaultMaxConcurrentQueries is the default number of queries executing at once.
	DefaultMaxConcurrentQueries = 4
	// DefaultMaxWaitingQueries is the default number of requests waiting for a free query slot.
	DefaultMaxWaitingQueries = 64
	// DefaultQueryTimeout is the default upper bound on one request.
	DefaultQueryTimeout = 5 * time.Minute
	// DefaultMaxResultBytes is the default bound on one response body (1 GiB).
	DefaultMaxResultBytes int64 = 1 << 30

	maxConcurrentQueriesMax = 256
	maxWaitingQueriesMax    = 65536
)

// Config configures an embedded ClickHouse endpoint. The zero value is valid:
// every zero field takes the default documented on it.
type Config struct {
	// LibPath is the path to libchdb.so; "" means $CHDB_LIB_PATH, or else the
	// library already loaded in this process. The library is loaded once per
	// process: a later Start naming a different file fails.
	LibPath string
	// DataPath is the chDB data directory; "" means a temporary directory,
	// removed when the last Server using it closes. chDB runs one engine per
	// process, so every Server in a process shares the engine and its data
	// path; a Start naming a different DataPath while the engine runs fails.
	DataPath string
	// Users are the credentials accepted on every query request
	// (X-ClickHouse-User/X-ClickHouse-Key headers, basic auth, or user/password
	// URL parameters), each with its Role: see RoleAnalyst, RoleWriter and
	// RoleAdmin. Passwords are at least 16 bytes. No users is refused unless
	// AllowAnonymous is set.
	Users []User
	// AllowAnonymous, with no Users, lets every request in with full access to
	// the engine, the host's files and the network included. For tests only.
	AllowAnonymous bool
	// Server bounds the HTTP connections: reading headers, reading a request
	// (a body that arrives slower is cut off), writing the answer (a query's
	// answer may take QueryTimeout on top), keep-alive idling, header bytes.
	// Zero fields take httpx.DefaultServerConfig's (5 s, 15 s, 30 s, 120 s, 64 KiB).
	Server httpx.ServerConfig
	// MaxBodyBytes bounds a request body, both as received and after
	// decompression; larger bodies fail with HTTP 413. Default 256 MiB.
	MaxBodyBytes int64
	// MaxConcurrentQueries bounds the queries executing at once, each on its
	// own chDB connection. Default 4, at most 256.
	MaxConcurrentQueries int
	// MaxWaitingQueries bounds the requests waiting for a free query slot;
	// beyond it requests fail at once with HTTP 503 (code 202). Default 64.
	MaxWaitingQueries int
	// QueryTimeout bounds one request, waiting included. It caps the
	// max_execution_time setting a client sends; a client's own shorter
	// context deadline or disconnect cancels the query too. Default 5 min.
	QueryTimeout time.Duration
	// MaxResultBytes bounds one response body; larger results fail with
	// code 396. chDB materialises a result before it is checked, so this
	// bounds what is sent, not the engine's memory. Default 1 GiB.
	MaxResultBytes int64
}

// Validate reports every invalid field, joined.
func (c Config) Validate() error {
	var errs []error
	if c.MaxBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxBodyBytes: %d is negative", c.MaxBodyBytes))
	}
	if c.MaxConcurrentQueries < 0 || c.MaxConcurrentQueries > maxConcurrentQueriesMax {
		errs = append(errs, fmt.Errorf("MaxConcurrentQueries: %d not in [0, %d]", c.MaxConcurrentQueries, maxConcurrentQueriesMax))
	}
	if c.MaxWaitingQueries < 0 || c.MaxWaitingQueries > maxWaitingQueriesMax {
		errs = append(errs, fmt.Errorf("MaxWaitingQueries: %d not in [0, %d]", c.MaxWaitingQueries, maxWaitingQueriesMax))
	}
	if c.QueryTimeout < 0 {
		errs = append(errs, fmt.Errorf("QueryTimeout: %s is negative", c.QueryTimeout))
	}
	if c.MaxResultBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxResultBytes: %d is negative", c.MaxResultBytes))
	}
	if len(c.Users) == 0 && !c.AllowAnonymous {
		errs = append(errs, errNoUsers)
	}
	if len(c.Users) > 0 && c.AllowAnonymous {
		errs = append(errs, errors.New("AllowAnonymous: set with Users"))
	}
	seen := map[string]bool{}
	for i, u := range c.Users {
		errs = append(errs, u.validate(i)...)
		if seen[u.Name] {
			errs = append(errs, fmt.Errorf("Users[%d].Name: %q twice", i, u.Name))
		}
		seen[u.Name] = true
	}
	if c.Server.ReadHeaderTimeout < 0 || c.Server.ReadTimeout < 0 || c.Server.WriteTimeout < 0 || c.Server.IdleTimeout < 0 || c.Server.MaxHeaderBytes < 0 {
		errs = append(errs, errors.New("Server: negative timeout or MaxHeaderBytes"))
	}
	return errors.Join(errs...)
}

// withDefaults returns c with every zero field replaced by its default.
func (c Config) withDefaults() Config {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxConcurrentQueries == 0 {
		c.MaxConcurrentQueries = DefaultMaxConcurrentQueries
	}
	if c.MaxWaitingQueries == 0 {
		c.MaxWaitingQueries = DefaultMaxWaitingQueries
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = DefaultQueryTimeout
	}
	if c.MaxResultBytes == 0 {
		c.MaxResultBytes = DefaultMaxResultBytes
	}
	d := httpx.DefaultServerConfig
	for _, f := range []struct{ v, def *time.Duration }{
		{&c.Server.ReadHeaderTimeout, &d.ReadHeaderTimeout}, {&c.Server.ReadTimeout, &d.ReadTimeout},
		{&c.Server.WriteTimeout, &d.WriteTimeout}, {&c.Server.IdleTimeout, &d.IdleTimeout},
	} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	if c.Server.MaxHeaderBytes == 0 {
		c.Server.MaxHeaderBytes = d.MaxHeaderBytes
	}
	return c
}
