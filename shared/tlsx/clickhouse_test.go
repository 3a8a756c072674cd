package tlsx_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/tlsx"
	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

// TestClickHouseOverTLS serves the embedded ClickHouse engine's HTTP interface through
// tlsx.Serve (mutual TLS) and queries it with clickhouse-go using a ClientConfig's Build, as
// the CLICKHOUSE_TLS_* settings do. A client trusting another CA is refused.
func TestClickHouseOverTLS(t *testing.T) {
	engine := chembedtest.Start(t)
	ca := tlsxtest.NewCA(t)
	cert, key := ca.Issue(t, "127.0.0.1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: engine.Handler(), ReadHeaderTimeout: testTimeout, ErrorLog: discardLog()}
	done := make(chan error, 1)
	go func() {
		done <- tlsx.Serve(srv, ln, tlsx.ServerConfig{CertFile: cert, KeyFile: key, ClientCAFile: ca.CertFile(), RequireClientCert: true})
	}()
	t.Cleanup(func() { _ = srv.Close(); <-done })

	clientCert, clientKey := ca.Issue(t, "sink")
	query := func(c tlsx.ClientConfig) (uint8, error) {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ln.Addr().String()}, Protocol: clickhouse.HTTP,
			TLS: mustClient(t, c), DialTimeout: 10 * time.Second})
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		var v uint8
		err = conn.QueryRow(ctx, "SELECT toUInt8(1 + 1)").Scan(&v)
		return v, err
	}
	if v, err := query(tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), CertFile: clientCert, KeyFile: clientKey}); err != nil || v != 2 {
		t.Fatalf("query over mutual TLS: %d, %v", v, err)
	}
	_, err = query(tlsx.ClientConfig{Enabled: true, CAFile: tlsxtest.NewCA(t).CertFile(), CertFile: clientCert, KeyFile: clientKey})
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("client trusting another CA: %v, want x509.UnknownAuthorityError", err)
	}
	if _, err := query(tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile()}); err == nil {
		t.Fatal("client without a certificate was answered")
	}
}
