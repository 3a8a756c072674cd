package tlsx_test

import (
	"testing"

	"github.com/tallyhq/tally/shared/tlsx"
	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

// BenchmarkGetCertificate measures the per-handshake cost of the reloading certificate source
// between checks (default 5 s interval), i.e. the path every handshake takes.
func BenchmarkGetCertificate(b *testing.B) {
	ca := tlsxtest.NewCA(b)
	cert, key := ca.Issue(b, "127.0.0.1")
	tc, err := tlsx.ServerConfig{CertFile: cert, KeyFile: key}.Build()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if c, err := tc.GetCertificate(nil); c == nil || err != nil {
			b.Fatal(c, err)
		}
	}
}
