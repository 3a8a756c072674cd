// Package tlsxtest generates certificates for tests: a throwaway CA (ECDSA P-256) that issues
// certificates usable by servers and clients, written as PEM files into tb.TempDir().
package tlsxtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// Validity of every generated certificate: from an hour ago (clock skew) to a day ahead.
const (
	notBeforeAgo = time.Hour
	validFor     = 24 * time.Hour
)

// CA is a test certificate authority.
type CA struct {
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	dir      string
	certFile string
	seq      atomic.Int64
}

// NewCA returns a new self-signed CA whose certificate is in CA.CertFile().
func NewCA(tb testing.TB) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: "tlsxtest CA", Organization: []string{"Tally tests"}},
		NotBefore:             time.Now().Add(-notBeforeAgo),
		NotAfter:              time.Now().Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatalf("tlsxtest: create CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("tlsxtest: parse CA: %v", err)
	}
	ca := &CA{cert: cert, key: key, dir: tb.TempDir()}
	ca.certFile = filepath.Join(ca.dir, "ca.pem")
	writePEM(tb, ca.certFile, "CERTIFICATE", der)
	return ca
}

// CertFile is the PEM file of the CA's certificate.
func (ca *CA) CertFile() string { return ca.certFile }

// Cert is the CA's certificate.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// Pool is a pool holding only the CA's certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Issue issues a certificate for hosts (DNS names, or IP addresses when they parse as such)
// valid for server and client authentication, and returns its PEM certificate and key files.
// The first host is the common name. Every call writes new files.
func (ca *CA) Issue(tb testing.TB, hosts ...string) (certFile, keyFile string) {
	tb.Helper()
	key := newKey(tb)
	cn := "tlsxtest"
	if len(hosts) > 0 {
		cn = hosts[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(tb),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Tally tests"}},
		NotBefore:    time.Now().Add(-notBeforeAgo),
		NotAfter:     time.Now().Add(validFor),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatalf("tlsxtest: issue %v: %v", hosts, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatalf("tlsxtest: marshal key: %v", err)
	}
	n := ca.seq.Add(1)
	certFile = filepath.Join(ca.dir, "cert"+itoa(n)+".pem")
	keyFile = filepath.Join(ca.dir, "key"+itoa(n)+".pem")
	writePEM(tb, certFile, "CERTIFICATE", der)
	writePEM(tb, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("tlsxtest: generate key: %v", err)
	}
	return key
}

func serial(tb testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatalf("tlsxtest: serial: %v", err)
	}
	return n
}

func writePEM(tb testing.TB, path, typ string, der []byte) {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatalf("tlsxtest: write %s: %v", path, err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
