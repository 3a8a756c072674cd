package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
)

// timeoutErr is what a kafka-go Conn returns when its read deadline passes first: a
// *net.OpError wrapping os.ErrDeadlineExceeded, printed "... i/o timeout".
var timeoutErr = &net.OpError{Op: "read", Net: "tcp",
	Source: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53422},
	Addr:   &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9092}, Err: os.ErrDeadlineExceeded}

// An idle partition's fetch that ends at the client's read deadline is kafka-go's normal idle
// path (its deadline is only a quarter of MaxWait after the broker's): it is logged at DEBUG.
// Every other reader error stays a warning.
func TestReaderLoggerIdleTimeoutIsNotAWarning(t *testing.T) {
	const format = "the kafka reader got an unknown error reading partition %d of %s at offset %d: %s"
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"i/o timeout", timeoutErr, "level=DEBUG"},
		{"refused", errors.New("dial tcp 127.0.0.1:9092: connect: connection refused"), "level=WARN"},
		{"reset", errors.New("read tcp 127.0.0.1:1->127.0.0.1:9092: read: connection reset by peer"), "level=WARN"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			readerLogger(log, "kafka reader").Printf(format, 3, "tally.events", 42, c.err)
			out := buf.String()
			if !strings.Contains(out, c.want) || !strings.Contains(out, "partition 3 of tally.events") {
				t.Fatalf("logged %q, want %s with the detail", out, c.want)
			}
		})
	}
	// The error as kafka-go formats it (%s of the error) is still recognised when it comes
	// wrapped.
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	readerLogger(log, "kafka reader").Printf(format, 0, "t", 0, fmt.Errorf("fetch: %w", timeoutErr))
	if !strings.Contains(buf.String(), "level=DEBUG") {
		t.Fatalf("wrapped timeout logged %q", buf.String())
	}
}
