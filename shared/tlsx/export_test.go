package tlsx

import (
	"crypto/tls"
	"time"
)

// BuildServerAt is Build with an injected clock, so tests can step past the reload interval
// without waiting.
func BuildServerAt(c ServerConfig, now func() time.Time) (*tls.Config, error) { return c.build(now) }
