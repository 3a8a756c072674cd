// Package chembed serves ClickHouse's HTTP interface on top of chDB, the
// ClickHouse engine embedded as a library, so that clickhouse-go/v2 (with
// Protocol: clickhouse.HTTP), curl and database/sql run unmodified against a
// real engine inside the test or tool process.
//
// chDB runs one engine per process: every Server shares it (see Config).
// Each executing query has its own chDB connection; the server tracks the
// connection's current database and applies a request's settings with SET
// before the query and SET ... = DEFAULT after it.
package chembed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tallyhq/tally/shared/httpx"
)

// Server is one embedded ClickHouse HTTP endpoint.
type Server struct {
	cfg     Config
	eng     *engine
	pool    *pool
	ln      net.Listener
	httpSrv *http.Server
	handler http.Handler
	seq     atomic.Uint64 // numbers requests for KILL QUERY tags
	closed  atomic.Bool
	served  chan struct{}
}

// Start validates cfg, boots (or joins) the process-wide engine and listens
// on addr (e.g. "127.0.0.1:0"). It returns once the listener is bound.
func Start(cfg Config, addr string) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("chembed: config: %w", err)
	}
	cfg = cfg.withDefaults()
	eng, err := acquireEngine(cfg.LibPath, cfg.DataPath)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		eng.release()
		return nil, fmt.Errorf("chembed: listen %s: %w", addr, err)
	}
	s := &Server{
		cfg:    cfg,
		eng:    eng,
		pool:   newPool(eng, cfg.ConcurrentQueriesMax, cfg.WaitingQueriesMax),
		ln:     ln,
		served: make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ping", s.ping)
	mux.HandleFunc("/", s.serveQuery)
	s.handler = mux
	// Slow clients must not pin connections: a body that is not in within
	// Server.ReadTimeout is cut off, as on the services; bodies are bounded by
	// BodyBytesMax and queries by QueryTimeout.
	s.httpSrv = httpx.NewServer(addr, mux, cfg.Server)
	go func() {
		defer close(s.served)
		_ = s.httpSrv.Serve(ln)
	}()
	return s, nil
}

// Addr returns the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL returns the server's base URL, http://host:port.
func (s *Server) URL() string { return "http://" + s.Addr() }

// Handler returns the server's HTTP handler, for mounting elsewhere.
func (s *Server) Handler() http.Handler { return s.handler }

// closeGrace bounds how long Close waits for running queries.
const closeGrace = 10 * time.Second

// Close stops accepting requests, waits up to 10 s for running ones, closes
// the server's chDB connections and releases the engine; the last Server of
// the process shuts the engine down (and removes a temporary DataPath).
func (s *Server) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
	defer cancel()
	err := s.httpSrv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.httpSrv.Close())
	}
	<-s.served
	s.pool.close()
	if err == nil {
		// Only with every handler returned is no connection of ours in use.
		s.eng.release()
	}
	if err != nil {
		return fmt.Errorf("chembed: close: %w", err)
	}
	return nil
}

func (s *Server) ping(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
	w.Header().Set("Content-Length", "4")
	_, _ = io.WriteString(w, "Ok.\n")
}

func (s *Server) serveQuery(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		writeError(w, &httpError{code: codeUnsupportedHTTPMethod, status: http.StatusNotFound,
			msg: "There is no handle " + strconv.Quote(r.URL.Path) + ". (UNSUPPORTED_METHOD)"})
		return
	}
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		writeError(w, &httpError{code: codeUnsupportedHTTPMethod, status: http.StatusMethodNotAllowed,
			msg: "Method " + r.Method + " is not supported. (UNSUPPORTED_METHOD)"})
		return
	}
	user := s.authenticate(r)
	if user == nil {
		// The user name is echoed as ClickHouse does; the password never is.
		writeError(w, &httpError{code: codeAuthenticationFailed,
			msg: "Authentication failed: password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)"})
		return
	}
	req, err := parseRequest(r.URL.Query())
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	// The body must arrive within Server.ReadTimeout (the connection's read
	// deadline, left as it is); the answer may take the query's time.
	// Handlers outside an http.Server cannot set deadlines.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.QueryTimeout + closeGrace))
	if err := s.run(ctx, w, r, req, user); err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			err = &httpError{code: codeQueryWasCancelled, msg: "Query was cancelled or timed out before it ran: " + ctx.Err().Error() + ". (QUERY_WAS_CANCELLED)"}
		}
		writeError(w, err)
	}
}
