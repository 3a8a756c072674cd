package tlsx_test

import (
	"io"
	"log"
)

// discardLog silences the expected "TLS handshake error" lines of rejected clients.
func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }
