package chembed

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// insertChunkBytes is how much insert data is handed to chDB per append.
const insertChunkBytes = 1 << 20

var insertBufs = sync.Pool{New: func() any { b := make([]byte, insertChunkBytes); return &b }}

// queryTags numbers queries process-wide: the tag, set as log_comment, is
// what KILL QUERY finds a query by when its request is cancelled.
var queryTags atomic.Uint64

// run executes one query request and writes its successful response; errors
// are returned for the caller to write.
func (s *Server) run(ctx context.Context, w http.ResponseWriter, r *http.Request, req *request, user *User) error {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
		return &httpError{code: codeNotImplemented, msg: "External tables (multipart bodies) are not supported. (NOT_IMPLEMENTED)"}
	}
	dec, err := bodyReader(http.MaxBytesReader(w, r.Body, s.cfg.BodyBytesMax), r.Header.Get("Content-Encoding"), req.decompress)
	if err != nil {
		return err
	}
	data := io.Reader(&limitReader{r: dec, n: s.cfg.BodyBytesMax})

	// The query is ?query= followed by a newline and the body, or the body
	// alone. An INSERT's data is streamed rather than read into memory.
	text := req.query
	ins, isInsert := splitInsert(text)
	if !req.hasQuery || !isInsert {
		body, err := io.ReadAll(data)
		if err != nil {
			return err
		}
		if req.hasQuery && len(body) > 0 {
			text += "\n"
		}
		text += string(body)
		ins, isInsert = splitInsert(text)
		data = strings.NewReader("")
		s.bodyRead(w)
	}
	if strings.TrimSpace(text) == "" {
		return &httpError{code: codeSyntaxError, status: http.StatusBadRequest, msg: "Empty query. (SYNTAX_ERROR)"}
	}
	if !isInsert && isHello(text) {
		return writeHello(w, r, req, s.eng)
	}
	pl, err := authorize(user, text, ins, isInsert, req.settings, req.params)
	if err != nil {
		return err
	}

	conn, err := s.pool.get(ctx)
	if err != nil {
		return err
	}
	reusable := true
	defer func() { s.pool.put(conn, reusable) }()

	if conn.db != req.database {
		if err := conn.exec("USE " + quoteIdent(req.database)); err != nil {
			return err
		}
		conn.db = req.database
	}
	tag := "chembed-" + strconv.FormatUint(queryTags.Add(1), 10)
	extra := []setting{{name: "max_execution_time", value: s.execSecondsMax(ctx, req)}}
	if !req.logComment {
		extra = append(extra, setting{name: "log_comment", value: tag})
		// A cancelled request (client gone, deadline passed) kills its query.
		stop := context.AfterFunc(ctx, func() { s.eng.kill(tag) })
		defer stop()
	}
	if pl.valuesLiteral {
		// Values data is literals only: an expression there could call file().
		extra = append(extra, setting{name: "input_format_values_interpret_expressions", value: "0"},
			setting{name: "input_format_values_deduce_templates_of_expressions", value: "0"})
	}
	if pl.readonly {
		// Last, so that it applies whatever came before; once set, the engine
		// refuses to change it (SET, SETTINGS) and so it cannot be reset either:
		// the connection is closed after the query.
		extra = append(extra, setting{name: "readonly", value: "1"})
		reusable = false
	}
	if err := conn.exec(setStatement(req.settings, extra...)); err != nil {
		reusable = false // some settings may have applied
		return err
	}
	if !pl.readonly {
		defer func() {
			if err := conn.exec(resetStatement(req.settings, extra...)); err != nil {
				reusable = false
			}
		}()
	}
	if changesSession(text) {
		// A statement's USE, SET or temporary table would leak into later
		// requests on this connection; HTTP requests are sessionless.
		reusable = false
	}

	w.Header().Set("X-ClickHouse-Query-Id", firstNonEmpty(req.queryID, tag))
	if isInsert {
		return s.insert(w, conn, req, ins, data)
	}
	res, err := conn.query(text, req.format, req.params)
	if err != nil {
		return err
	}
	defer res.free()
	out := res.bytes()
	if int64(len(out)) > s.cfg.ResultBytesMax {
		return &httpError{code: codeTooManyRowsOrBytes,
			msg: "Result of " + strconv.Itoa(len(out)) + " bytes exceeds the server's ResultBytesMax. (TOO_MANY_ROWS_OR_BYTES)"}
	}
	return writeResult(w, r, req, out)
}

// execSecondsMax is the max_execution_time for a query: the client's value,
// capped by what is left of the request's QueryTimeout.
func (s *Server) execSecondsMax(ctx context.Context, req *request) string {
	secs := s.cfg.QueryTimeout.Seconds()
	if dl, ok := ctx.Deadline(); ok {
		secs = max(time.Until(dl).Seconds(), 0.001)
	}
	if req.execSecsMax > 0 && req.execSecsMax < secs {
		secs = req.execSecsMax
	}
	return strconv.FormatFloat(secs, 'f', 3, 64)
}

// insert streams an INSERT's data into chDB in chunks.
// bodyRead lifts the connection's read deadline once the body is in: past it, the
// server's check for a client gone would cancel a query that is merely long.
func (s *Server) bodyRead(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.cfg.QueryTimeout + closeGrace))
}

func (s *Server) insert(w http.ResponseWriter, conn *chConn, req *request, ins insertData, body io.Reader) error {
	st, err := conn.streamInsert(ins.stmt, ins.format, req.params)
	if err != nil {
		return err
	}
	bufp := insertBufs.Get().(*[]byte)
	defer insertBufs.Put(bufp)
	buf := *bufp
	first := true
	for {
		n, rerr := io.ReadFull(body, buf)
		if first && n > 0 && ins.inline != "" {
			// ClickHouse reads ?query= and the body as query + "\n" + body.
			ins.inline += "\n"
		}
		if first {
			if err := st.append([]byte(ins.inline)); err != nil {
				st.cancel()
				return err
			}
			first = false
		}
		if err := st.append(buf[:n]); err != nil {
			st.cancel()
			return err
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			s.bodyRead(w)
			break
		}
		if rerr != nil {
			st.cancel()
			return rerr
		}
	}
	rows, err := st.done()
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("X-ClickHouse-Summary", `{"written_rows":"`+strconv.FormatUint(rows, 10)+`"}`)
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
	return nil
}

// changesSession reports statements whose effect outlives the request on a
// chDB connection.
func changesSession(q string) bool {
	switch firstKeyword(q) {
	case "USE", "SET":
		return true
	case "CREATE":
		i := skipSpaceAndComments(q, 0) + len("CREATE")
		return hasKeyword(q, skipSpaceAndComments(q, i), "TEMPORARY")
	}
	return false
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
