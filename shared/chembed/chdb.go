package chembed

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/ebitengine/purego"
)

// This file binds the part of libchdb's C API (chdb.h, chDB 26.x) the server
// uses. It binds the library itself with purego instead of going through
// chdb-go because chdb-go opens the library in its package init (panicking
// when it is missing, which would take a test binary down before a test can
// say why) and binds neither chdb_query_with_params_n nor the streaming
// insert functions that binary insert bodies need.

// libchdb holds the resolved C entry points. Handles are opaque uintptrs owned
// by the library.
type libchdb struct {
	connect                func(argc int32, argv **byte) uintptr
	closeConn              func(conn uintptr)
	queryWithParamsN       func(conn uintptr, query *byte, queryLen uintptr, format *byte, formatLen uintptr, names **byte, nameLens *uintptr, values **byte, valueLens *uintptr, count uintptr) uintptr
	destroyResult          func(res uintptr)
	resultBuffer           func(res uintptr) uintptr
	resultLength           func(res uintptr) uintptr
	resultError            func(res uintptr) uintptr
	resultRowsWritten      func(res uintptr) uint64
	streamInsertWithParamN func(conn uintptr, query *byte, queryLen uintptr, format *byte, formatLen uintptr, names **byte, nameLens *uintptr, values **byte, valueLens *uintptr, count uintptr) uintptr
	streamAppend           func(stream uintptr, data *byte, n uintptr) int32
	streamDone             func(stream uintptr) uintptr
	streamCancelInsert     func(stream uintptr)
	streamInsertError      func(stream uintptr) uintptr
	destroyInsertStream    func(stream uintptr)
	setSignalHandlers      func(enabled int32)
	version                func() uintptr
}

// openLib loads libchdb.so from path and resolves every symbol the server
// uses, failing (instead of panicking, as purego.RegisterLibFunc would) when
// one is missing.
func openLib(path string) (*libchdb, error) {
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, fmt.Errorf("chembed: load %s: %w", path, err)
	}
	l := &libchdb{}
	syms := []struct {
		fn   any
		name string
	}{
		{&l.connect, "chdb_connect"},
		{&l.closeConn, "chdb_close_conn"},
		{&l.queryWithParamsN, "chdb_query_with_params_n"},
		{&l.destroyResult, "chdb_destroy_query_result"},
		{&l.resultBuffer, "chdb_result_buffer"},
		{&l.resultLength, "chdb_result_length"},
		{&l.resultError, "chdb_result_error"},
		{&l.resultRowsWritten, "chdb_result_rows_written"},
		{&l.streamInsertWithParamN, "chdb_stream_insert_with_params_n"},
		{&l.streamAppend, "chdb_stream_append"},
		{&l.streamDone, "chdb_stream_done"},
		{&l.streamCancelInsert, "chdb_stream_cancel_insert"},
		{&l.streamInsertError, "chdb_stream_insert_error"},
		{&l.destroyInsertStream, "chdb_destroy_insert_stream"},
		{&l.setSignalHandlers, "chdb_set_signal_handlers_enabled"},
		{&l.version, "chdb_version"},
	}
	for _, s := range syms {
		sym, err := purego.Dlsym(h, s.name)
		if err != nil {
			return nil, fmt.Errorf("chembed: %s does not export %s (need chDB >= 26.x): %w", path, s.name, err)
		}
		purego.RegisterFunc(s.fn, sym)
	}
	return l, nil
}

// cString copies a NUL-terminated C string into Go memory.
func cString(p uintptr) string {
	if p == 0 {
		return ""
	}
	n := 0
	base := unsafePointer(p)
	for *(*byte)(unsafe.Add(base, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(base), n))
}

// unsafePointer converts an address of C memory, which the Go garbage
// collector neither moves nor frees, to a pointer.
func unsafePointer(p uintptr) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(&p))
}

// strPtr returns a pointer to the bytes of s, or nil when s is empty.
func strPtr(s string) *byte {
	if s == "" {
		return nil
	}
	return unsafe.StringData(s)
}

// paramArrays lays query parameters out as the four parallel C arrays the
// *_with_params_n functions take. The Go strings they point into must stay
// alive for the call; callers keep params referenced and runtime.KeepAlive it.
type paramArrays struct {
	names, values       []*byte
	nameLens, valueLens []uintptr
}

func newParamArrays(params []param) paramArrays {
	var a paramArrays
	for _, p := range params {
		a.names = append(a.names, strPtr(p.name))
		a.nameLens = append(a.nameLens, uintptr(len(p.name)))
		a.values = append(a.values, strPtr(p.value))
		a.valueLens = append(a.valueLens, uintptr(len(p.value)))
	}
	return a
}

func (a *paramArrays) ptrs() (**byte, *uintptr, **byte, *uintptr, uintptr) {
	if len(a.names) == 0 {
		return nil, nil, nil, nil, 0
	}
	return &a.names[0], &a.nameLens[0], &a.values[0], &a.valueLens[0], uintptr(len(a.names))
}

// param is one named query parameter ({name:Type} placeholder).
type param struct{ name, value string }

// chConn is one chDB connection: it runs one statement at a time.
type chConn struct {
	lib    *libchdb
	handle uintptr // chdb_connection* as returned by chdb_connect
	// db is the current database set by USE on this connection.
	db string
}

func (c *chConn) conn() uintptr { return *(*uintptr)(unsafePointer(c.handle)) }

// result is a chDB query result; its buffer lives in C memory until free.
type result struct {
	lib *libchdb
	h   uintptr
}

// bytes returns the result data without copying; valid until free.
func (r result) bytes() []byte {
	if r.h == 0 {
		return nil
	}
	n := r.lib.resultLength(r.h)
	p := r.lib.resultBuffer(r.h)
	if n == 0 || p == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafePointer(p)), n)
}

func (r result) free() {
	if r.h != 0 {
		r.lib.destroyResult(r.h)
	}
}

// query runs one statement and returns its output in format. The caller
// frees the result. A failed statement returns an *engineError.
func (c *chConn) query(q, format string, params []param) (result, error) {
	a := newParamArrays(params)
	names, nameLens, values, valueLens, n := a.ptrs()
	h := c.lib.queryWithParamsN(c.conn(), strPtr(q), uintptr(len(q)), strPtr(format), uintptr(len(format)),
		names, nameLens, values, valueLens, n)
	runtime.KeepAlive(q)
	runtime.KeepAlive(format)
	runtime.KeepAlive(params)
	runtime.KeepAlive(&a)
	r := result{lib: c.lib, h: h}
	if h == 0 {
		return r, nil
	}
	if msg := cString(c.lib.resultError(h)); msg != "" {
		r.free()
		return result{}, newEngineError(msg)
	}
	return r, nil
}

// exec runs a statement whose output does not matter.
func (c *chConn) exec(q string) error {
	r, err := c.query(q, "TabSeparated", nil)
	r.free()
	return err
}

// insertStream is an open chDB streaming INSERT.
type insertStream struct {
	lib *libchdb
	h   uintptr
}

// streamInsert starts a streaming INSERT of data in format into the table
// named by stmt (an INSERT statement without FORMAT clause or data).
func (c *chConn) streamInsert(stmt, format string, params []param) (*insertStream, error) {
	a := newParamArrays(params)
	names, nameLens, values, valueLens, n := a.ptrs()
	h := c.lib.streamInsertWithParamN(c.conn(), strPtr(stmt), uintptr(len(stmt)), strPtr(format), uintptr(len(format)),
		names, nameLens, values, valueLens, n)
	runtime.KeepAlive(stmt)
	runtime.KeepAlive(format)
	runtime.KeepAlive(params)
	runtime.KeepAlive(&a)
	s := &insertStream{lib: c.lib, h: h}
	if h == 0 {
		return nil, errors.New("chembed: chdb_stream_insert returned no handle")
	}
	if msg := cString(c.lib.streamInsertError(h)); msg != "" {
		s.lib.destroyInsertStream(h)
		return nil, newEngineError(msg)
	}
	return s, nil
}

// append pushes one chunk of data; the engine copies it.
func (s *insertStream) append(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	rc := s.lib.streamAppend(s.h, &b[0], uintptr(len(b)))
	runtime.KeepAlive(b)
	if rc != 0 {
		if msg := cString(s.lib.streamInsertError(s.h)); msg != "" {
			return newEngineError(msg)
		}
		return errors.New("chembed: chdb_stream_append failed")
	}
	return nil
}

// done commits the insert and releases the stream; it returns rows written.
func (s *insertStream) done() (uint64, error) {
	defer s.lib.destroyInsertStream(s.h)
	h := s.lib.streamDone(s.h)
	if h == 0 {
		if msg := cString(s.lib.streamInsertError(s.h)); msg != "" {
			return 0, newEngineError(msg)
		}
		return 0, nil
	}
	defer s.lib.destroyResult(h)
	if msg := cString(s.lib.resultError(h)); msg != "" {
		return 0, newEngineError(msg)
	}
	return s.lib.resultRowsWritten(h), nil
}

// cancel aborts the insert without committing and releases the stream.
func (s *insertStream) cancel() {
	s.lib.streamCancelInsert(s.h)
	s.lib.destroyInsertStream(s.h)
}
