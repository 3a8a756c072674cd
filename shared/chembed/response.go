package chembed

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/ClickHouse/ch-go/compress"
	chproto "github.com/ClickHouse/ch-go/proto"
	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// frameBytes is the uncompressed size of one ClickHouse compressed frame,
// ClickHouse's max_compress_block_size default.
const frameBytes = 1 << 20

// minRevisionCustomSerialization is the protocol revision from which a Native
// block carries a custom-serialization flag per column.
const minRevisionCustomSerialization = 54454

var frameWriters [compress.NumMethods]sync.Pool

// compressFrames encodes out as ClickHouse compressed frames.
func compressFrames(out []byte, m compress.Method, level int) ([]byte, error) {
	var cw *compress.Writer
	if v := frameWriters[m].Get(); v != nil && level == 0 {
		cw = v.(*compress.Writer)
	} else {
		cw = compress.NewWriter(compress.Level(level), m)
	}
	defer func() {
		if level == 0 {
			frameWriters[m].Put(cw)
		}
	}()
	dst := make([]byte, 0, len(out)/2+64)
	for len(out) > 0 {
		n := min(len(out), frameBytes)
		if err := cw.Compress(out[:n]); err != nil {
			return nil, &httpError{code: codeUnknownException, msg: "compress: " + err.Error()}
		}
		dst = append(dst, cw.Data...)
		out = out[n:]
	}
	return dst, nil
}

// writeResult writes a successful response with an exact Content-Length.
func writeResult(w http.ResponseWriter, r *http.Request, req *request, out []byte) error {
	h := w.Header()
	h.Set("Content-Type", contentType(req.format))
	h.Set("X-ClickHouse-Format", req.format)
	if req.compress && len(out) > 0 {
		var err error
		if out, err = compressFrames(out, req.method, req.zstdLevel); err != nil {
			return err
		}
	}
	if req.httpCompr && len(out) > 0 {
		if enc := pickEncoding(r.Header.Get("Accept-Encoding")); enc != "" {
			var err error
			if out, err = encodeBody(out, enc); err != nil {
				return err
			}
			h.Set("Content-Encoding", enc)
		}
	}
	h.Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out) // a client gone mid-write is not the server's error
	return nil
}

// writeHello answers clickhouse-go's connect-time hello query itself, as a
// Native block in the revision the client announced, reporting revision 0 so
// that the client decodes all later results as plain Native (what chDB
// writes).
func writeHello(w http.ResponseWriter, r *http.Request, req *request, e *engine) error {
	var b chproto.Buffer
	if req.protocolRev > 0 {
		// Block info: field 1 is_overflows=false, field 2 bucket_num=-1, end.
		b.PutUVarInt(1)
		b.PutBool(false)
		b.PutUVarInt(2)
		b.PutInt32(-1)
		b.PutUVarInt(0)
	}
	b.PutUVarInt(4) // columns
	b.PutUVarInt(1) // rows
	column := func(name, typ string, data func()) {
		b.PutString(name)
		b.PutString(typ)
		if req.protocolRev >= minRevisionCustomSerialization {
			b.PutBool(false)
		}
		data()
	}
	column("displayName()", "String", func() { b.PutString(e.displayName) })
	column("version()", "String", func() { b.PutString(e.version) })
	column("revision()", "UInt32", func() { b.PutUInt32(0) })
	column("timezone()", "String", func() { b.PutString(e.timezone) })
	hr := *req
	hr.format = "Native"
	return writeResult(w, r, &hr, b.Buf)
}

// writeError writes err in ClickHouse's shape: a non-200 status, the code in
// X-ClickHouse-Exception-Code and "Code: N. DB::Exception: ..." as the body.
func writeError(w http.ResponseWriter, err error) {
	code, status, text := exception(err)
	body := text + "\n"
	h := w.Header()
	h.Del("Content-Encoding")
	h.Set("Content-Type", "text/plain; charset=UTF-8")
	h.Set("X-ClickHouse-Exception-Code", strconv.Itoa(code))
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func contentType(format string) string {
	f := strings.ToLower(format)
	switch {
	case strings.HasPrefix(f, "tabseparated") || strings.HasPrefix(f, "tsv"):
		return "text/tab-separated-values; charset=UTF-8"
	case strings.HasPrefix(f, "csv"):
		return "text/csv; charset=UTF-8; header=absent"
	case f == "jsoneachrow" || f == "jsonlines" || f == "ndjson":
		return "application/x-ndjson; charset=UTF-8"
	case strings.HasPrefix(f, "json"):
		return "application/json; charset=UTF-8"
	case f == "native" || strings.HasPrefix(f, "rowbinary") || f == "parquet" || strings.HasPrefix(f, "arrow"):
		return "application/octet-stream"
	}
	return "text/plain; charset=UTF-8"
}

// pickEncoding returns the first supported encoding the client accepts.
func pickEncoding(accept string) string {
	for _, part := range strings.Split(accept, ",") {
		enc := strings.ToLower(strings.TrimSpace(strings.SplitN(part, ";", 2)[0]))
		switch enc {
		case "gzip", "deflate", "br", "zstd":
			return enc
		}
	}
	return ""
}

func encodeBody(out []byte, enc string) ([]byte, error) {
	var buf bytes.Buffer
	var wc io.WriteCloser
	switch enc {
	case "gzip":
		wc = gzip.NewWriter(&buf)
	case "deflate":
		wc = zlib.NewWriter(&buf)
	case "br":
		wc = brotli.NewWriter(&buf)
	case "zstd":
		zw, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		wc = zw
	}
	if _, err := wc.Write(out); err != nil {
		return nil, err
	}
	if err := wc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
