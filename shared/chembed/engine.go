package chembed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// chDB runs one engine per process, on one data path. The engine boots with
// the first connection and shuts down when the last one closes, so the
// process-wide engine below holds an anchor connection for as long as any
// Server uses it, and pools add connections beside it.

var (
	engineMu   sync.Mutex
	loaded     *libchdb // loaded once per process; never unloaded
	loadedPath string
	running    *engine
)

// engine is the process-wide chDB instance.
type engine struct {
	lib     *libchdb
	path    string
	tempDir bool // path was created by acquireEngine and is removed on shutdown
	refs    int  // Servers using the engine; guarded by engineMu

	adminMu sync.Mutex // serialises use of anchor
	anchor  *chConn    // never pooled; keeps the engine up, runs KILL QUERY

	displayName, version, timezone string
}

// acquireEngine returns the running engine, booting it on first use.
func acquireEngine(libPath, dataPath string) (*engine, error) {
	engineMu.Lock()
	defer engineMu.Unlock()
	lib, err := loadLib(libPath)
	if err != nil {
		return nil, err
	}
	if running != nil {
		if dataPath != "" && filepath.Clean(dataPath) != running.path {
			return nil, fmt.Errorf("chembed: engine already runs on %s; chDB allows one data path per process, not %s", running.path, dataPath)
		}
		running.refs++
		return running, nil
	}
	e := &engine{lib: lib, path: filepath.Clean(dataPath)}
	if dataPath == "" {
		dir, err := os.MkdirTemp("", "chembed-")
		if err != nil {
			return nil, fmt.Errorf("chembed: data dir: %w", err)
		}
		e.path, e.tempDir = dir, true
	} else if err := os.MkdirAll(e.path, 0o755); err != nil {
		return nil, fmt.Errorf("chembed: data dir: %w", err)
	}
	// chDB's signal handlers would take over SIGSEGV and friends from the Go
	// runtime; the flag must be cleared before the first connect.
	lib.setSignalHandlers(0)
	if e.anchor, err = e.connect(); err != nil {
		e.removeTemp()
		return nil, err
	}
	if err := e.loadInfo(); err != nil {
		e.anchor.close()
		e.removeTemp()
		return nil, err
	}
	e.refs = 1
	running = e
	return e, nil
}

func loadLib(libPath string) (*libchdb, error) {
	if libPath == "" {
		libPath = os.Getenv("CHDB_LIB_PATH")
	}
	if libPath == "" && loaded != nil {
		return loaded, nil
	}
	if libPath == "" {
		return nil, errors.New("chembed: no libchdb.so: set Config.LibPath or CHDB_LIB_PATH")
	}
	if loaded != nil {
		if libPath != loadedPath {
			return nil, fmt.Errorf("chembed: %s already loaded; cannot load %s too", loadedPath, libPath)
		}
		return loaded, nil
	}
	if _, err := os.Stat(libPath); err != nil {
		return nil, fmt.Errorf("chembed: libchdb: %w", err)
	}
	lib, err := openLib(libPath)
	if err != nil {
		return nil, err
	}
	loaded, loadedPath = lib, libPath
	return lib, nil
}

// release drops one reference; the last one shuts the engine down.
func (e *engine) release() {
	engineMu.Lock()
	defer engineMu.Unlock()
	e.refs--
	if e.refs > 0 {
		return
	}
	e.adminMu.Lock() // a late kill must not use the closed anchor
	e.anchor.close()
	e.adminMu.Unlock()
	e.removeTemp()
	running = nil
}

func (e *engine) removeTemp() {
	if e.tempDir {
		_ = os.RemoveAll(e.path)
	}
}

// connect opens one more connection to the engine's data path.
func (e *engine) connect() (*chConn, error) {
	args := []string{"clickhouse", "--path=" + e.path}
	argv := make([]*byte, len(args))
	for i, a := range args {
		b := append([]byte(a), 0)
		argv[i] = &b[0]
	}
	h := e.lib.connect(int32(len(argv)), &argv[0])
	if h == 0 || *(**byte)(unsafePointer(h)) == nil {
		return nil, fmt.Errorf("chembed: chdb_connect --path=%s failed", e.path)
	}
	return &chConn{lib: e.lib, handle: h, db: "default"}, nil
}

func (c *chConn) close() {
	if c.handle != 0 {
		c.lib.closeConn(c.handle)
		c.handle = 0
	}
}

func (e *engine) loadInfo() error {
	r, err := e.anchor.query("SELECT displayName(), version(), timezone()", "TabSeparated", nil)
	if err != nil {
		return fmt.Errorf("chembed: engine info: %w", err)
	}
	defer r.free()
	f := strings.Split(strings.TrimRight(string(r.bytes()), "\n"), "\t")
	if len(f) != 3 {
		return fmt.Errorf("chembed: engine info: unexpected %q", r.bytes())
	}
	e.displayName, e.version, e.timezone = f[0], f[1], f[2]
	return nil
}

// kill cancels the query tagged with log_comment tag, if it still runs.
func (e *engine) kill(tag string) {
	e.adminMu.Lock()
	defer e.adminMu.Unlock()
	if e.anchor.handle == 0 { // the engine has shut down
		return
	}
	_ = e.anchor.exec("KILL QUERY WHERE Settings['log_comment'] = " + quoteString(tag) + " ASYNC")
}

// pool hands out up to size chDB connections, one per executing query.
type pool struct {
	eng      *engine
	slots    chan struct{} // semaphore: one token per executing query
	idle     chan *chConn  // connections ready for reuse
	waiting  chan struct{} // semaphore: one token per waiting request
	closedMu sync.Mutex
	closed   bool
}

func newPool(e *engine, size, waitingMax int) *pool {
	return &pool{
		eng:     e,
		slots:   make(chan struct{}, size),
		idle:    make(chan *chConn, size),
		waiting: make(chan struct{}, waitingMax),
	}
}

var (
	errTooManyWaiting = errors.New("chembed: too many waiting queries")
	errPoolClosed     = errors.New("chembed: server closed")
)

// get waits for a free slot and returns a connection for it.
func (p *pool) get(ctx context.Context) (*chConn, error) {
	select {
	case p.slots <- struct{}{}:
	default:
		select {
		case p.waiting <- struct{}{}:
		default:
			return nil, errTooManyWaiting
		}
		select {
		case p.slots <- struct{}{}:
			<-p.waiting
		case <-ctx.Done():
			<-p.waiting
			return nil, ctx.Err()
		}
	}
	// Checking closed and connecting under one lock keeps a request that
	// races Close from connecting to an engine that Close then releases.
	p.closedMu.Lock()
	defer p.closedMu.Unlock()
	if p.closed {
		<-p.slots
		return nil, errPoolClosed
	}
	select {
	case c := <-p.idle:
		return c, nil
	default:
	}
	c, err := p.eng.connect()
	if err != nil {
		<-p.slots
		return nil, err
	}
	return c, nil
}

// put returns c to the pool, or closes it when its session state is unknown.
func (p *pool) put(c *chConn, reusable bool) {
	p.closedMu.Lock()
	closed := p.closed
	p.closedMu.Unlock()
	if reusable && !closed {
		p.idle <- c // cannot block: at most size connections exist
	} else {
		c.close()
	}
	<-p.slots
}

// close closes idle connections; callers must have stopped using the pool.
func (p *pool) close() {
	p.closedMu.Lock()
	p.closed = true
	p.closedMu.Unlock()
	for {
		select {
		case c := <-p.idle:
			c.close()
		default:
			return
		}
	}
}
