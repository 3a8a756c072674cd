package chembed

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
)

// ClickHouse error codes the server reports itself (ErrorCodes.cpp).
const (
	codeBadArguments          = 36
	codeSyntaxError           = 62
	codeNotImplemented        = 48
	codeUnknownSetting        = 115
	codeTooManySimultaneous   = 202
	codeCannotDecompress      = 271
	codeUnknownCompression    = 89 // UNKNOWN_COMPRESSION_METHOD
	codeTooManyBytes          = 307
	codeQueryWasCancelled     = 394
	codeTooManyRowsOrBytes    = 396
	codeAuthenticationFailed  = 516
	codeSocketTimeout         = 209
	codeUnknownException      = 1002
	codeUnsupportedHTTPMethod = 1 // UNSUPPORTED_METHOD
)

// engineError is an error reported by the engine, carrying its ClickHouse
// error code (0 when the text has none).
type engineError struct {
	code int
	msg  string // "Code: N. DB::Exception: ..." as ClickHouse formats it
}

func (e *engineError) Error() string { return e.msg }

var codeRe = regexp.MustCompile(`^\s*Code:\s*(\d+)\.`)

func newEngineError(msg string) *engineError {
	e := &engineError{msg: strings.TrimRight(msg, "\n")}
	if m := codeRe.FindStringSubmatch(msg); m != nil {
		e.code, _ = strconv.Atoi(m[1])
	}
	return e
}

// httpError is an error the server itself reports, in ClickHouse's shape.
type httpError struct {
	code   int
	status int // 0 = derived from code
	msg    string
}

func (e *httpError) Error() string { return e.msg }

// exception returns the ClickHouse code, HTTP status and body text for err.
func exception(err error) (code, status int, text string) {
	var ee *engineError
	var he *httpError
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &ee) && ee.code > 0:
		return ee.code, statusFor(ee.code), ee.msg
	case errors.As(err, &ee):
		code = codeUnknownException
		return code, statusFor(code), fmt.Sprintf("Code: %d. DB::Exception: %s. (UNKNOWN_EXCEPTION)", code, ee.msg)
	case errors.As(err, &ne) && ne.Timeout():
		code, status, text = codeSocketTimeout, http.StatusRequestTimeout,
			"Request body not received within the server's read timeout. (SOCKET_TIMEOUT)"
	case errors.Is(err, errBodyTooLarge) || errors.As(err, &mbe):
		code, status, text = codeTooManyBytes, http.StatusRequestEntityTooLarge,
			"Request body exceeds the server's BodyBytesMax. (TOO_MANY_BYTES)"
	case errors.As(err, &he):
		code, status, text = he.code, he.status, he.msg
	case errors.Is(err, errTooManyWaiting):
		code, status, text = codeTooManySimultaneous, http.StatusServiceUnavailable,
			"Too many simultaneous queries: MaxWaitingQueries reached. (TOO_MANY_SIMULTANEOUS_QUERIES)"
	case errors.Is(err, errPoolClosed):
		code, status, text = codeQueryWasCancelled, http.StatusServiceUnavailable,
			"Server is shutting down. (QUERY_WAS_CANCELLED)"
	default:
		code, text = codeUnknownException, err.Error()
	}
	if status == 0 {
		status = statusFor(code)
	}
	return code, status, fmt.Sprintf("Code: %d. DB::Exception: %s", code, text)
}

// statusFor maps an error code to the HTTP status ClickHouse answers with.
func statusFor(code int) int {
	switch code {
	case codeAuthenticationFailed, 192, 194: // UNKNOWN_USER, REQUIRED_PASSWORD
		return http.StatusUnauthorized
	case 6, 25, 26, 27, 38, 41, 42, 43, 53, 62, 69, 72, 73, 117, 130, 164, 190, 376,
		codeBadArguments, codeUnknownSetting, codeCannotDecompress, codeUnknownCompression:
		// Parse failures, syntax, bad arguments and types, readonly, unknown format.
		return http.StatusBadRequest
	case 46, 47, 50, 56, 60, 81: // UNKNOWN_FUNCTION, _IDENTIFIER, _TYPE, _STORAGE, _TABLE, _DATABASE
		return http.StatusNotFound
	case codeTooManyBytes:
		return http.StatusRequestEntityTooLarge
	case codeTooManySimultaneous:
		return http.StatusServiceUnavailable
	case codeUnsupportedHTTPMethod, codeNotImplemented:
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}
