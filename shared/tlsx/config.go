// Package tlsx holds Tally's transport security settings: TLS for the HTTP servers (server
// certificate, optional client certificates verified against a CA, certificate rotation
// without restart) and for the Kafka and ClickHouse clients (CA, optional client
// certificate).
//
// Both config structs carry caarlos0/env tags without a prefix; a service embeds them with
// one, e.g.
//
//	TLS      tlsx.ServerConfig `envPrefix:"ADMITTER_TLS_"`
//	KafkaTLS tlsx.ClientConfig `envPrefix:"KAFKA_TLS_"`
//
// Build returns nil (and no error) when TLS is off, so the result can be handed straight to
// KafkaTransport, KafkaDialer, clickhouse.Options.TLS or http.Server.TLSConfig.
package tlsx

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"
)

// DefaultReloadCheckMs is the default of ServerConfig.ReloadCheckMs: the served certificate
// files are stat'ed at most once every 5 s.
const DefaultReloadCheckMs = 5000

// ReloadCheckMsMax bounds ServerConfig.ReloadCheckMs (one hour): a longer interval would leave
// a rotated-out certificate in service for too long.
const ReloadCheckMsMax = 3_600_000

// ServerConfig is the TLS setting of one HTTP server. TLS is on when CertFile and KeyFile are
// set (Enabled); with both empty the server speaks plain HTTP.
type ServerConfig struct {
	// CertFile is the PEM server certificate chain (leaf first). "" = TLS off.
	CertFile string `env:"CERT_FILE"`
	// KeyFile is the PEM private key of CertFile. Set both or neither.
	KeyFile string `env:"KEY_FILE"`
	// ClientCAFile is a PEM bundle of CAs whose client certificates are accepted. When set
	// without RequireClientCert a client may present no certificate, but a presented one
	// must verify.
	ClientCAFile string `env:"CLIENT_CA_FILE"`
	// RequireClientCert refuses clients without a certificate issued by ClientCAFile (mutual
	// TLS). Needs ClientCAFile.
	RequireClientCert bool `env:"REQUIRE_CLIENT_CERT"`
	// MinVersion is the lowest TLS version accepted: "1.2" (default; "" means the same) or "1.3".
	MinVersion string `env:"MIN_VERSION" envDefault:"1.2"`
	// ReloadCheckMs is how often, at most, a handshake stats CertFile and KeyFile to pick up a
	// rotated certificate (default 5000; 0 means the default; at most ReloadCheckMsMax).
	ReloadCheckMs int `env:"RELOAD_CHECK_MS" envDefault:"5000"`
}

// Enabled reports whether the server speaks TLS: CertFile or KeyFile is set (Validate
// insists on both).
func (c ServerConfig) Enabled() bool { return c.CertFile != "" || c.KeyFile != "" }

// Validate is ValidateEnv("").
func (c ServerConfig) Validate() error { return c.ValidateEnv("") }

// ValidateEnv checks every field and joins every problem, each named by its variable: prefix
// plus the field's env name (e.g. ValidateEnv("ADMITTER_TLS_") names ADMITTER_TLS_CERT_FILE).
// It reads the files: a missing, unreadable or mismatched certificate, key or CA is an error,
// so a service refuses to start on it.
func (c ServerConfig) ValidateEnv(prefix string) error {
	var errs []error
	bad := func(name, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", prefix, name, fmt.Sprintf(format, a...)))
	}
	if _, err := parseMinVersion(c.MinVersion); err != nil {
		bad("MIN_VERSION", "%v", err)
	}
	if c.ReloadCheckMs < 0 || c.ReloadCheckMs > ReloadCheckMsMax {
		bad("RELOAD_CHECK_MS", "%d out of range 0..%d", c.ReloadCheckMs, ReloadCheckMsMax)
	}
	switch {
	case c.CertFile == "" && c.KeyFile != "":
		bad("CERT_FILE", "empty while %sKEY_FILE is set", prefix)
	case c.CertFile != "" && c.KeyFile == "":
		bad("KEY_FILE", "empty while %sCERT_FILE is set", prefix)
	case c.CertFile != "":
		errs = append(errs, checkKeyPair(prefix, c.CertFile, c.KeyFile)...)
	}
	if !c.Enabled() && (c.ClientCAFile != "" || c.RequireClientCert) {
		bad("CERT_FILE", "empty (TLS off) while client certificates are configured")
	}
	if c.RequireClientCert && c.ClientCAFile == "" {
		bad("CLIENT_CA_FILE", "empty while %sREQUIRE_CLIENT_CERT is true", prefix)
	}
	if c.ClientCAFile != "" {
		if _, err := loadPool(c.ClientCAFile); err != nil {
			bad("CLIENT_CA_FILE", "%v", err)
		}
	}
	return errors.Join(errs...)
}

// Build validates c and returns the server's TLS config, or nil when TLS is off. The
// certificate comes from a GetCertificate that re-reads CertFile and KeyFile when their
// modification time, size or identity (inode) changes, checked at most once per
// ReloadCheckMs, so rotating the files needs no restart. A rotated pair that does not load
// (e.g. the key not written yet) leaves the previous certificate in service and is retried at
// the next check. ClientCAFile is read once, here.
func (c ServerConfig) Build() (*tls.Config, error) { return c.build(time.Now) }

func (c ServerConfig) build(now func() time.Time) (*tls.Config, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("tlsx: server config: %w", err)
	}
	if !c.Enabled() {
		return nil, nil
	}
	minVersion, _ := parseMinVersion(c.MinVersion)
	check := time.Duration(c.ReloadCheckMs) * time.Millisecond
	if c.ReloadCheckMs == 0 {
		check = DefaultReloadCheckMs * time.Millisecond
	}
	r, err := newReloader(c.CertFile, c.KeyFile, check, now)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{
		MinVersion: minVersion,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.current(), nil
		},
	}
	if c.ClientCAFile != "" {
		pool, err := loadPool(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tlsx: client CA: %w", err)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	if c.RequireClientCert {
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// ClientConfig is the TLS setting of a client of Kafka or ClickHouse.
type ClientConfig struct {
	// Enabled turns TLS on (default false: plaintext). Every other field needs it.
	Enabled bool `env:"ENABLED"`
	// CAFile is a PEM bundle of CAs trusted to sign the server's certificate. "" = the
	// system's roots.
	CAFile string `env:"CA_FILE"`
	// CertFile is the client certificate (PEM) presented when the server asks for one;
	// "" = none. Re-read on change like the server's (checked at most every 5 s).
	CertFile string `env:"CERT_FILE"`
	// KeyFile is the PEM private key of CertFile. Set both or neither.
	KeyFile string `env:"KEY_FILE"`
	// ServerName is the name the server's certificate must carry. "" = the host dialled.
	ServerName string `env:"SERVER_NAME"`
	// InsecureSkipVerify accepts any server certificate. For local experiments only: it
	// gives up all protection against an active attacker. Cannot be combined with CAFile.
	InsecureSkipVerify bool `env:"INSECURE_SKIP_VERIFY"`
}

// Validate is ValidateEnv("").
func (c ClientConfig) Validate() error { return c.ValidateEnv("") }

// ValidateEnv checks every field and joins every problem, each named by prefix plus the
// field's env name (e.g. ValidateEnv("KAFKA_TLS_") names KAFKA_TLS_CA_FILE). It reads the
// files.
func (c ClientConfig) ValidateEnv(prefix string) error {
	var errs []error
	bad := func(name, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", prefix, name, fmt.Sprintf(format, a...)))
	}
	if !c.Enabled {
		// A CA or certificate without ENABLED would silently leave the link in plaintext.
		if c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" || c.ServerName != "" || c.InsecureSkipVerify {
			bad("ENABLED", "false while other %s* settings are set", prefix)
		}
		return errors.Join(errs...)
	}
	switch {
	case c.CertFile == "" && c.KeyFile != "":
		bad("CERT_FILE", "empty while %sKEY_FILE is set", prefix)
	case c.CertFile != "" && c.KeyFile == "":
		bad("KEY_FILE", "empty while %sCERT_FILE is set", prefix)
	case c.CertFile != "":
		errs = append(errs, checkKeyPair(prefix, c.CertFile, c.KeyFile)...)
	}
	if c.CAFile != "" {
		if _, err := loadPool(c.CAFile); err != nil {
			bad("CA_FILE", "%v", err)
		}
		if c.InsecureSkipVerify {
			bad("INSECURE_SKIP_VERIFY", "true while %sCA_FILE is set: the CA would be ignored", prefix)
		}
	}
	return errors.Join(errs...)
}

// Build validates c and returns the client's TLS config (TLS 1.2 or newer), or nil when
// Enabled is false.
func (c ClientConfig) Build() (*tls.Config, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("tlsx: client config: %w", err)
	}
	if !c.Enabled {
		return nil, nil
	}
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify, //nolint:gosec // an explicit, documented setting
	}
	if c.CAFile != "" {
		pool, err := loadPool(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tlsx: CA: %w", err)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		r, err := newReloader(c.CertFile, c.KeyFile, DefaultReloadCheckMs*time.Millisecond, time.Now)
		if err != nil {
			return nil, err
		}
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return r.current(), nil
		}
	}
	return tc, nil
}

func parseMinVersion(s string) (uint16, error) {
	switch s {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q unknown: want 1.2 or 1.3", s)
}

// checkKeyPair names the files that are missing, then whether the pair loads.
func checkKeyPair(prefix, certFile, keyFile string) []error {
	var errs []error
	for _, f := range []struct{ name, path string }{{"CERT_FILE", certFile}, {"KEY_FILE", keyFile}} {
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s%s: %w", prefix, f.name, err))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		return []error{fmt.Errorf("%sCERT_FILE/%sKEY_FILE: %w", prefix, prefix, err)}
	}
	return nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", path)
	}
	return pool, nil
}
