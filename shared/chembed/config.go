package chembed

import (
	"errors"
	"fmt"
	"time"

	"github.com/tallyhq/tally/shared/httpx"
)

// Defaults and bounds of Config. A zero field takes its default.
const (
	// DefaultBodyBytesMax is the default request body bound (256 MiB).
	DefaultBodyBytesMax int64 = 256 << 20
	// DefaultConcurrentQueriesMax is the default number of queries executing at once.
	DefaultConcurrentQueriesMax = 4
	// DefaultWaitingQueriesMax is the default number of requests waiting for a free query slot.
	DefaultWaitingQueriesMax = 64
	// DefaultQueryTimeout is the default upper bound on one request.
	DefaultQueryTimeout = 5 * time.Minute
	// DefaultResultBytesMax is the default bound on one response body (1 GiB).
	DefaultResultBytesMax int64 = 1 << 30

	concurrentQueriesMaxLimit = 256
	waitingQueriesMaxLimit    = 65536
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
	// BodyBytesMax bounds a request body, both as received and after
	// decompression; larger bodies fail with HTTP 413. Default 256 MiB.
	BodyBytesMax int64
	// ConcurrentQueriesMax bounds the queries executing at once, each on its
	// own chDB connection. Default 4, at most 256.
	ConcurrentQueriesMax int
	// WaitingQueriesMax bounds the requests waiting for a free query slot;
	// beyond it requests fail at once with HTTP 503 (code 202). Default 64.
	WaitingQueriesMax int
	// QueryTimeout bounds one request, waiting included. It caps the
	// max_execution_time setting a client sends; a client's own shorter
	// context deadline or disconnect cancels the query too. Default 5 min.
	QueryTimeout time.Duration
	// ResultBytesMax bounds one response body; larger results fail with
	// code 396. chDB materialises a result before it is checked, so this
	// bounds what is sent, not the engine's memory. Default 1 GiB.
	ResultBytesMax int64
}

// Validate reports every invalid field, joined.
func (c Config) Validate() error {
	var errs []error
	if c.BodyBytesMax < 0 {
		errs = append(errs, fmt.Errorf("BodyBytesMax: %d is negative", c.BodyBytesMax))
	}
	if c.ConcurrentQueriesMax < 0 || c.ConcurrentQueriesMax > concurrentQueriesMaxLimit {
		errs = append(errs, fmt.Errorf("ConcurrentQueriesMax: %d not in [0, %d]", c.ConcurrentQueriesMax, concurrentQueriesMaxLimit))
	}
	if c.WaitingQueriesMax < 0 || c.WaitingQueriesMax > waitingQueriesMaxLimit {
		errs = append(errs, fmt.Errorf("WaitingQueriesMax: %d not in [0, %d]", c.WaitingQueriesMax, waitingQueriesMaxLimit))
	}
	if c.QueryTimeout < 0 {
		errs = append(errs, fmt.Errorf("QueryTimeout: %s is negative", c.QueryTimeout))
	}
	if c.ResultBytesMax < 0 {
		errs = append(errs, fmt.Errorf("ResultBytesMax: %d is negative", c.ResultBytesMax))
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
	if c.BodyBytesMax == 0 {
		c.BodyBytesMax = DefaultBodyBytesMax
	}
	if c.ConcurrentQueriesMax == 0 {
		c.ConcurrentQueriesMax = DefaultConcurrentQueriesMax
	}
	if c.WaitingQueriesMax == 0 {
		c.WaitingQueriesMax = DefaultWaitingQueriesMax
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = DefaultQueryTimeout
	}
	if c.ResultBytesMax == 0 {
		c.ResultBytesMax = DefaultResultBytesMax
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
