package tlsx

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
)

// ListenAndServe listens on srv.Addr (":http" when empty, ":https" with TLS) and serves
// HTTPS when cfg is Enabled, plain HTTP otherwise. A bad cfg is reported before listening.
// Like http.Server.ListenAndServe it returns http.ErrServerClosed after Shutdown.
func ListenAndServe(srv *http.Server, cfg ServerConfig) error {
	tc, err := cfg.Build()
	if err != nil {
		return err
	}
	addr := srv.Addr
	if addr == "" {
		addr = ":http"
		if tc != nil {
			addr = ":https"
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("tlsx: listen %s: %w", addr, err)
	}
	return serve(srv, ln, tc)
}

// Serve serves on ln (e.g. bound to 127.0.0.1:0 by a test), HTTPS when cfg is Enabled and
// plain HTTP otherwise. ln is closed when Serve returns, also on a bad cfg.
func Serve(srv *http.Server, ln net.Listener, cfg ServerConfig) error {
	tc, err := cfg.Build()
	if err != nil {
		_ = ln.Close()
		return err
	}
	return serve(srv, ln, tc)
}

func serve(srv *http.Server, ln net.Listener, tc *tls.Config) error {
	if tc == nil {
		return srv.Serve(ln)
	}
	srv.TLSConfig = tc
	// The certificate comes from tc.GetCertificate: no file names here.
	return srv.ServeTLS(ln, "", "")
}
