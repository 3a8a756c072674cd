package tlsxtest_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

func TestIssueVerifiesAgainstItsCAOnly(t *testing.T) {
	ca, other := tlsxtest.NewCA(t), tlsxtest.NewCA(t)
	certFile, keyFile := ca.Issue(t, "127.0.0.1", "kafka.local")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("key %T, want ECDSA P-256", leaf.PublicKey)
	}
	for _, name := range []string{"127.0.0.1", "kafka.local"} {
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Errorf("%s usage %v: %v", name, usage, err)
			}
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: other.Pool(), DNSName: "kafka.local"}); err == nil {
		t.Error("verified against another CA")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "other.local"}); err == nil {
		t.Error("verified for a name it does not carry")
	}
	if c2, _ := ca.Issue(t, "127.0.0.1"); c2 == certFile {
		t.Error("Issue reused a file name")
	}
}
