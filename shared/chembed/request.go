package chembed

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/ClickHouse/ch-go/compress"
	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// request is a parsed ClickHouse HTTP request.
type request struct {
	query       string // ?query=, "" when the query is in the body
	hasQuery    bool
	database    string
	format      string // output format (default_format), default TabSeparated
	queryID     string
	compress    bool // answer in ClickHouse compressed frames
	method      compress.Method
	zstdLevel   int
	decompress  bool // body arrives in ClickHouse compressed frames
	httpCompr   bool // enable_http_compression=1
	params      []param
	settings    []setting // sorted by name
	execSecsMax float64   // client's max_execution_time, 0 when unset
	logComment  bool      // client set log_comment itself
	protocolRev uint64    // client_protocol_version, for the hello reply
}

type setting struct{ name, value string }

// httpOnlyParams are URL parameters of the HTTP interface itself, not settings.
var httpOnlyParams = map[string]bool{
	"query": true, "database": true, "default_format": true, "query_id": true, "quota_key": true,
	"session_id": true, "session_timeout": true, "session_check": true,
	"compress": true, "decompress": true, "network_compression_method": true,
	"network_zstd_compression_level": true, "user": true, "password": true, "role": true,
	"buffer_size": true, "wait_end_of_query": true, "enable_http_compression": true,
	"client_protocol_version": true, "max_execution_time": true,
}

var settingNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// parseRequest reads the URL parameters of a query request.
func parseRequest(v url.Values) (*request, error) {
	r := &request{format: "TabSeparated", database: "default", method: compress.LZ4}
	if qs, ok := v["query"]; ok {
		r.query, r.hasQuery = qs[0], true
	}
	if db := v.Get("database"); db != "" {
		r.database = db
	}
	if f := v.Get("default_format"); f != "" {
		r.format = f
	}
	r.queryID = v.Get("query_id")
	r.compress = v.Get("compress") == "1"
	r.decompress = v.Get("decompress") == "1"
	r.httpCompr = v.Get("enable_http_compression") == "1"
	switch m := strings.ToUpper(v.Get("network_compression_method")); m {
	case "", "LZ4":
	case "LZ4HC":
		r.method = compress.LZ4HC
	case "ZSTD":
		r.method = compress.ZSTD
	case "NONE":
		r.method = compress.None
	default:
		return nil, &httpError{code: codeBadArguments, msg: "Unknown network_compression_method " + strconv.Quote(m) + ". (BAD_ARGUMENTS)"}
	}
	if l := v.Get("network_zstd_compression_level"); l != "" {
		r.zstdLevel, _ = strconv.Atoi(l)
	}
	if s := v.Get("max_execution_time"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f < 0 {
			return nil, &httpError{code: codeBadArguments, msg: "Invalid max_execution_time " + strconv.Quote(s) + ". (BAD_ARGUMENTS)"}
		}
		r.execSecsMax = f
	}
	if s := v.Get("client_protocol_version"); s != "" {
		r.protocolRev, _ = strconv.ParseUint(s, 10, 64)
	}
	for k, vs := range v {
		switch {
		case strings.HasPrefix(k, "param_"):
			r.params = append(r.params, param{name: strings.TrimPrefix(k, "param_"), value: vs[0]})
		case httpOnlyParams[k] || strings.HasPrefix(k, "http_"):
		case !settingNameRe.MatchString(k):
			return nil, &httpError{code: codeUnknownSetting, msg: "Unknown setting " + strconv.Quote(k) + ". (UNKNOWN_SETTING)"}
		default:
			if k == "log_comment" {
				r.logComment = true
			}
			r.settings = append(r.settings, setting{name: k, value: vs[0]})
		}
	}
	sort.Slice(r.settings, func(i, j int) bool { return r.settings[i].name < r.settings[j].name })
	return r, nil
}

// quoteString renders s as a ClickHouse string literal.
func quoteString(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '\'':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// quoteIdent renders s as a ClickHouse identifier.
func quoteIdent(s string) string {
	return "`" + strings.NewReplacer("\\", "\\\\", "`", "\\`").Replace(s) + "`"
}

var (
	errBodyTooLarge = errors.New("chembed: request body too large")
)

// limitReader fails with errBodyTooLarge once more than n bytes were read.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return 0, errBodyTooLarge
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.n < 0 {
		return n, errBodyTooLarge
	}
	return n, err
}

// bodyReader undoes Content-Encoding and ClickHouse frame compression.
func bodyReader(body io.Reader, contentEncoding string, frames bool) (io.Reader, error) {
	var r io.Reader = body
	switch enc := strings.ToLower(strings.TrimSpace(contentEncoding)); enc {
	case "", "identity", "none":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, &httpError{code: codeCannotDecompress, msg: "Cannot decode gzip body: " + err.Error() + ". (CANNOT_DECOMPRESS)"}
		}
		r = zr
	case "deflate":
		// HTTP's deflate is zlib-wrapped (RFC 9110) and that is what
		// clickhouse-go sends; accept raw deflate streams too.
		br := bufio.NewReader(r)
		h, _ := br.Peek(2)
		if len(h) == 2 && h[0]&0x0f == 8 && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 {
			zr, err := zlib.NewReader(br)
			if err != nil {
				return nil, &httpError{code: codeCannotDecompress, msg: "Cannot decode deflate body: " + err.Error() + ". (CANNOT_DECOMPRESS)"}
			}
			r = zr
		} else {
			r = flate.NewReader(br)
		}
	case "br":
		r = brotli.NewReader(r)
	case "zstd":
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, &httpError{code: codeCannotDecompress, msg: "Cannot decode zstd body: " + err.Error() + ". (CANNOT_DECOMPRESS)"}
		}
		r = zr.IOReadCloser()
	default:
		return nil, &httpError{code: codeUnknownCompression, msg: "Unknown Content-Encoding " + strconv.Quote(enc) + ". (UNKNOWN_COMPRESSION_METHOD)"}
	}
	if r != body {
		r = &decodeReader{r: r, enc: contentEncoding}
	}
	if frames {
		r = &frameReader{r: compress.NewReader(r)}
	}
	return r, nil
}

// decodeReader reports a corrupt Content-Encoding body as CANNOT_DECOMPRESS
// while letting the body bounds' errors through.
type decodeReader struct {
	r   io.Reader
	enc string
}

func (d *decodeReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	var mbe *http.MaxBytesError
	var he *httpError
	if err != nil && err != io.EOF && !errors.As(err, &mbe) && !errors.Is(err, errBodyTooLarge) && !errors.As(err, &he) {
		err = &httpError{code: codeCannotDecompress, msg: "Cannot decode " + d.enc + " body: " + err.Error() + ". (CANNOT_DECOMPRESS)"}
	}
	return n, err
}

// frameReader reads ClickHouse compressed frames. ch-go's reader reports the
// end of the body, met where a frame header should start, as an error
// wrapping io.EOF ("header: EOF"); that is the normal end.
type frameReader struct{ r *compress.Reader }

func (f *frameReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err != nil && errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
		strings.Contains(err.Error(), "header: EOF") {
		return n, io.EOF
	}
	var mbe *http.MaxBytesError
	if err != nil && !errors.As(err, &mbe) {
		var he *httpError
		if !errors.As(err, &he) {
			err = &httpError{code: codeCannotDecompress, msg: "Cannot decompress body: " + err.Error() + ". (CANNOT_DECOMPRESS)"}
		}
	}
	return n, err
}

// insertData describes an INSERT whose data follows its text.
type insertData struct {
	stmt   string // INSERT statement without FORMAT clause and data
	format string
	inline string // data that was part of the query text
}

// splitInsert recognises "INSERT ... FORMAT f <data>" and
// "INSERT ... VALUES <data>". It scans tokens so keywords inside literals,
// quoted identifiers and comments are ignored; INSERT ... SELECT is not data.
func splitInsert(q string) (insertData, bool) {
	i := skipSpaceAndComments(q, 0)
	if !hasKeyword(q, i, "INSERT") {
		return insertData{}, false
	}
	for i < len(q) {
		i = skipSpaceAndComments(q, i)
		if i >= len(q) {
			break
		}
		switch c := q[i]; {
		case c == '\'' || c == '"' || c == '`':
			i = skipQuoted(q, i)
		case isIdentStart(c):
			j := i
			for j < len(q) && isIdentChar(q[j]) {
				j++
			}
			switch strings.ToUpper(q[i:j]) {
			case "SELECT", "WITH":
				return insertData{}, false
			case "VALUES":
				return insertData{stmt: q[:i], format: "Values", inline: q[j:]}, true
			case "FORMAT":
				k := skipSpaceAndComments(q, j)
				e := k
				for e < len(q) && isIdentChar(q[e]) {
					e++
				}
				if e == k {
					return insertData{}, false
				}
				return insertData{stmt: q[:i], format: q[k:e], inline: trimDataStart(q[e:])}, true
			}
			i = j
		default:
			i++
		}
	}
	return insertData{}, false
}

// trimDataStart drops the blanks and the one line break that separate a
// FORMAT clause from its data.
func trimDataStart(s string) string {
	i := 0
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	if strings.HasPrefix(s[i:], "\r\n") {
		return s[i+2:]
	}
	if strings.HasPrefix(s[i:], "\n") {
		return s[i+1:]
	}
	return s[i:]
}

func isIdentStart(c byte) bool {
	return c == '_' || (c|0x20 >= 'a' && c|0x20 <= 'z')
}

func isIdentChar(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

func hasKeyword(q string, i int, kw string) bool {
	return len(q)-i >= len(kw) && strings.EqualFold(q[i:i+len(kw)], kw) &&
		(len(q) == i+len(kw) || !isIdentChar(q[i+len(kw)]))
}

func skipSpaceAndComments(q string, i int) int {
	for i < len(q) {
		switch {
		case q[i] == ' ' || q[i] == '\t' || q[i] == '\n' || q[i] == '\r' || q[i] == '\f':
			i++
		case strings.HasPrefix(q[i:], "--") || q[i] == '#':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case strings.HasPrefix(q[i:], "/*"):
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				return len(q)
			}
			i += end + 4
		default:
			return i
		}
	}
	return i
}

func skipQuoted(q string, i int) int {
	quote := q[i]
	for i++; i < len(q); i++ {
		switch q[i] {
		case '\\':
			i++
		case quote:
			if i+1 < len(q) && q[i+1] == quote {
				i++
				continue
			}
			return i + 1
		}
	}
	return len(q)
}

// firstKeyword returns the upper-cased first word of q.
func firstKeyword(q string) string {
	i := skipSpaceAndComments(q, 0)
	j := i
	for j < len(q) && isIdentChar(q[j]) {
		j++
	}
	return strings.ToUpper(q[i:j])
}

// helloQuery is what clickhouse-go asks right after connecting over HTTP.
const helloQuery = "SELECT displayName(), version(), revision(), timezone()"

func isHello(q string) bool { return strings.TrimSpace(q) == helloQuery }

// setStatement renders the client's settings plus max_execution_time and the
// log_comment that tags the query for KILL QUERY.
func setStatement(settings []setting, extra ...setting) string {
	if len(settings)+len(extra) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("SET ")
	for i, s := range append(settings[:len(settings):len(settings)], extra...) {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s = %s", s.name, quoteString(s.value))
	}
	return b.String()
}

// resetStatement renders SET name = DEFAULT for every setting that was set.
func resetStatement(settings []setting, extra ...setting) string {
	if len(settings)+len(extra) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("SET ")
	for i, s := range append(settings[:len(settings):len(settings)], extra...) {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(s.name)
		b.WriteString(" = DEFAULT")
	}
	return b.String()
}
