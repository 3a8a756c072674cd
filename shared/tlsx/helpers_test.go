package tlsx_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/tlsx"
)

// testTimeout bounds every network call a test makes, so a hang fails instead of blocking.
const testTimeout = 30 * time.Second

// startHTTP serves, through tlsx.Serve with cfg, a handler answering the client
// certificate's common name ("anonymous" without one), and returns the bound address.
func startHTTP(t *testing.T, cfg tlsx.ServerConfig) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: testTimeout, ErrorLog: discardLog(),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			name := "anonymous"
			if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
				name = r.TLS.PeerCertificates[0].Subject.CommonName
			}
			_, _ = io.WriteString(w, name)
		})}
	done := make(chan error, 1)
	go func() { done <- tlsx.Serve(srv, ln, cfg) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ln.Addr().String()
}

// get does one GET (non-200 is an error) on a fresh connection (a new handshake every call) and returns the body.
func get(t *testing.T, url string, tc *tls.Config) (string, error) {
	t.Helper()
	c := &http.Client{Timeout: testTimeout, Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: status %d: %s", url, resp.StatusCode, b)
	}
	return string(b), err
}

func mustClient(t *testing.T, c tlsx.ClientConfig) *tls.Config {
	t.Helper()
	tc, err := c.Build()
	if err != nil {
		t.Fatalf("client Build: %v", err)
	}
	return tc
}

func mustServer(t *testing.T, c tlsx.ServerConfig) *tls.Config {
	t.Helper()
	tc, err := c.Build()
	if err != nil {
		t.Fatalf("server Build: %v", err)
	}
	return tc
}

// serialOf is the serial number of the first certificate in a PEM file.
func serialOf(t *testing.T, certFile string) *big.Int {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", certFile)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// install copies src to dst atomically (write beside, then rename), as rotation tools do.
func install(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, dst, b)
}

func writeAtomic(t *testing.T, dst string, b []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}
