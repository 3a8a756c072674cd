package tlsx_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/tlsx"
	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

func TestHTTPSAcceptsClientTrustingTheCA(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	cert, key := ca.Issue(t, "127.0.0.1", "localhost")
	addr := startHTTP(t, tlsx.ServerConfig{CertFile: cert, KeyFile: key, MinVersion: "1.2"})

	body, err := get(t, "https://"+addr, mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile()}))
	if err != nil || body != "anonymous" {
		t.Fatalf("trusted client: body %q, err %v", body, err)
	}
	// The certificate names localhost too: verifying that name (ServerName) passes.
	body, err = get(t, "https://"+addr, mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), ServerName: "localhost"}))
	if err != nil || body != "anonymous" {
		t.Fatalf("ServerName localhost: body %q, err %v", body, err)
	}
	// A plaintext request to the TLS port never reaches the handler (net/http answers 400).
	if body, err := get(t, "http://"+addr, nil); err == nil || body == "anonymous" {
		t.Fatalf("plain HTTP to the TLS server: body %q, err %v", body, err)
	}
}

func TestHTTPSRejectsClientNotTrustingTheCA(t *testing.T) {
	ca, other := tlsxtest.NewCA(t), tlsxtest.NewCA(t)
	cert, key := ca.Issue(t, "127.0.0.1")
	addr := startHTTP(t, tlsx.ServerConfig{CertFile: cert, KeyFile: key})

	for name, c := range map[string]tlsx.ClientConfig{
		"other CA":     {Enabled: true, CAFile: other.CertFile()},
		"system roots": {Enabled: true},
	} {
		_, err := get(t, "https://"+addr, mustClient(t, c))
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Errorf("%s: err %v, want x509.UnknownAuthorityError", name, err)
		}
	}
	// Trusted CA but a name the certificate does not carry.
	_, err := get(t, "https://"+addr, mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), ServerName: "ledger.example"}))
	var host x509.HostnameError
	if !errors.As(err, &host) {
		t.Errorf("wrong ServerName: err %v, want x509.HostnameError", err)
	}
}

func TestPlainHTTPWhenDisabled(t *testing.T) {
	addr := startHTTP(t, tlsx.ServerConfig{MinVersion: "1.2"})
	if body, err := get(t, "http://"+addr, nil); err != nil || body != "anonymous" {
		t.Fatalf("plain HTTP: body %q, err %v", body, err)
	}
	if _, err := get(t, "https://"+addr, &tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Fatal("HTTPS to the plaintext server succeeded")
	}
}

func TestRequireClientCert(t *testing.T) {
	ca, other := tlsxtest.NewCA(t), tlsxtest.NewCA(t)
	cert, key := ca.Issue(t, "127.0.0.1")
	addr := startHTTP(t, tlsx.ServerConfig{CertFile: cert, KeyFile: key, ClientCAFile: ca.CertFile(), RequireClientCert: true})

	if _, err := get(t, "https://"+addr, mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile()})); err == nil {
		t.Fatal("client without a certificate was accepted")
	}
	foreignCert, foreignKey := other.Issue(t, "intruder")
	if _, err := get(t, "https://"+addr, mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), CertFile: foreignCert, KeyFile: foreignKey})); err == nil {
		t.Fatal("client with a certificate from another CA was accepted")
	}
	clientCert, clientKey := ca.Issue(t, "ledger")
	body, err := get(t, "https://"+addr, mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), CertFile: clientCert, KeyFile: clientKey}))
	if err != nil || body != "ledger" {
		t.Fatalf("client with a CA-issued certificate: body %q, err %v, want ledger", body, err)
	}
}

func TestOptionalClientCert(t *testing.T) {
	ca, other := tlsxtest.NewCA(t), tlsxtest.NewCA(t)
	cert, key := ca.Issue(t, "127.0.0.1")
	addr := startHTTP(t, tlsx.ServerConfig{CertFile: cert, KeyFile: key, ClientCAFile: ca.CertFile()})

	if body, err := get(t, "https://"+addr, mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile()})); err != nil || body != "anonymous" {
		t.Fatalf("no certificate: body %q, err %v", body, err)
	}
	foreignCert, foreignKey := other.Issue(t, "intruder")
	if _, err := get(t, "https://"+addr, mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), CertFile: foreignCert, KeyFile: foreignKey})); err == nil {
		t.Fatal("a presented certificate from another CA was accepted")
	}
}

func TestMinVersion13(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	cert, key := ca.Issue(t, "127.0.0.1")
	addr := startHTTP(t, tlsx.ServerConfig{CertFile: cert, KeyFile: key, MinVersion: "1.3"})
	tc := mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile()})
	tc.MaxVersion = tls.VersionTLS12
	if _, err := get(t, "https://"+addr, tc); err == nil {
		t.Fatal("TLS 1.2 client accepted by a MinVersion 1.3 server")
	}
	tc.MaxVersion = 0
	if _, err := get(t, "https://"+addr, tc); err != nil {
		t.Fatalf("TLS 1.3 client: %v", err)
	}
}

// fakeClock is a clock tests step by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Add(d time.Duration) { c.ns.Add(int64(d)) }
func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Unix(1_700_000_000, 0).UnixNano())
	return c
}
func handshakeSerial(t *testing.T, addr string, tc *tls.Config) *big.Int {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: testTimeout}, "tcp", addr, tc)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

// TestRotationBoundedByCheckInterval steps a fake clock: a rotated pair is served from the
// first handshake after the check interval, not before, and a broken rotation keeps the
// previous certificate in service.
func TestRotationBoundedByCheckInterval(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	certA, keyA := ca.Issue(t, "127.0.0.1")
	install(t, certA, certPath)
	install(t, keyA, keyPath)

	clock := newFakeClock()
	serverTLS, err := tlsx.BuildServerAt(tlsx.ServerConfig{CertFile: certPath, KeyFile: keyPath, ReloadCheckMs: 5000}, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			_ = c.Close()
		}
	}()
	client := mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile()})
	addr := ln.Addr().String()

	if got := handshakeSerial(t, addr, client); got.Cmp(serialOf(t, certA)) != 0 {
		t.Fatalf("first handshake: serial %v, want A", got)
	}
	certB, keyB := ca.Issue(t, "127.0.0.1")
	install(t, certB, certPath)
	install(t, keyB, keyPath)
	clock.Add(4999 * time.Millisecond)
	if got := handshakeSerial(t, addr, client); got.Cmp(serialOf(t, certA)) != 0 {
		t.Fatalf("before the check interval: serial %v, want still A", got)
	}
	clock.Add(time.Millisecond)
	if got := handshakeSerial(t, addr, client); got.Cmp(serialOf(t, certB)) != 0 {
		t.Fatalf("after the check interval: serial %v, want B", got)
	}

	// Half a rotation: a new certificate whose key has not arrived. B stays in service.
	certC, keyC := ca.Issue(t, "127.0.0.1")
	install(t, certC, certPath)
	clock.Add(5 * time.Second)
	if got := handshakeSerial(t, addr, client); got.Cmp(serialOf(t, certB)) != 0 {
		t.Fatalf("mismatched pair: serial %v, want B kept", got)
	}
	// Garbage in the key file: still B.
	writeAtomic(t, keyPath, []byte("not a key"))
	clock.Add(5 * time.Second)
	if got := handshakeSerial(t, addr, client); got.Cmp(serialOf(t, certB)) != 0 {
		t.Fatalf("garbage key: serial %v, want B kept", got)
	}
	// The key arrives: C is served at the next check.
	install(t, keyC, keyPath)
	clock.Add(5 * time.Second)
	if got := handshakeSerial(t, addr, client); got.Cmp(serialOf(t, certC)) != 0 {
		t.Fatalf("completed rotation: serial %v, want C", got)
	}
}

// TestRotationOverHTTPS rotates the files under a running HTTPS server (tlsx.Serve, real
// clock, 1 ms check interval): new handshakes see the new certificate, no restart.
func TestRotationOverHTTPS(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	certA, keyA := ca.Issue(t, "127.0.0.1")
	install(t, certA, certPath)
	install(t, keyA, keyPath)
	addr := startHTTP(t, tlsx.ServerConfig{CertFile: certPath, KeyFile: keyPath, ReloadCheckMs: 1})

	var served *big.Int
	tc := mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile()})
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		served = cs.PeerCertificates[0].SerialNumber
		return nil
	}
	if _, err := get(t, "https://"+addr, tc); err != nil || served.Cmp(serialOf(t, certA)) != 0 {
		t.Fatalf("before rotation: serial %v, err %v, want A", served, err)
	}
	certB, keyB := ca.Issue(t, "127.0.0.1")
	install(t, certB, certPath)
	install(t, keyB, keyPath)
	time.Sleep(2 * time.Millisecond) // past the 1 ms check interval: the next handshake checks
	if _, err := get(t, "https://"+addr, tc); err != nil || served.Cmp(serialOf(t, certB)) != 0 {
		t.Fatalf("after rotation: serial %v, err %v, want B", served, err)
	}
}

func TestListenAndServeRejectsBadConfigBeforeListening(t *testing.T) {
	err := tlsx.ListenAndServe(&http.Server{Addr: "127.0.0.1:0"}, tlsx.ServerConfig{KeyFile: "/nonexistent/key.pem"})
	if err == nil || !strings.Contains(err.Error(), "CERT_FILE") {
		t.Fatalf("err %v, want a CERT_FILE error", err)
	}
}
