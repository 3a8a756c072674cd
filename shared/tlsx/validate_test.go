package tlsx_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tallyhq/tally/shared/tlsx"
	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

func TestServerConfigValidate(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	cert, key := ca.Issue(t, "127.0.0.1")
	otherCert, _ := ca.Issue(t, "127.0.0.1")
	junk := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(junk, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")

	for _, tc := range []struct {
		name string
		cfg  tlsx.ServerConfig
		want []string // substrings of the error; none = valid
	}{
		{"off", tlsx.ServerConfig{}, nil},
		{"off with default version", tlsx.ServerConfig{MinVersion: "1.2", ReloadCheckMs: 5000}, nil},
		{"tls", tlsx.ServerConfig{CertFile: cert, KeyFile: key, MinVersion: "1.3"}, nil},
		{"mtls", tlsx.ServerConfig{CertFile: cert, KeyFile: key, ClientCAFile: ca.CertFile(), RequireClientCert: true}, nil},
		{"missing cert file", tlsx.ServerConfig{CertFile: missing, KeyFile: key}, []string{"X_CERT_FILE: stat " + missing}},
		{"missing key file", tlsx.ServerConfig{CertFile: cert, KeyFile: missing}, []string{"X_KEY_FILE: stat " + missing}},
		{"key without cert", tlsx.ServerConfig{KeyFile: key}, []string{"X_CERT_FILE: empty while X_KEY_FILE is set"}},
		{"cert without key", tlsx.ServerConfig{CertFile: cert}, []string{"X_KEY_FILE: empty while X_CERT_FILE is set"}},
		{"key of another cert", tlsx.ServerConfig{CertFile: otherCert, KeyFile: key}, []string{"X_CERT_FILE/X_KEY_FILE", "private key does not match"}},
		{"junk cert", tlsx.ServerConfig{CertFile: junk, KeyFile: key}, []string{"X_CERT_FILE/X_KEY_FILE"}},
		{"unknown min version", tlsx.ServerConfig{CertFile: cert, KeyFile: key, MinVersion: "1.1"}, []string{`X_MIN_VERSION: "1.1" unknown`}},
		{"tls13 spelling", tlsx.ServerConfig{MinVersion: "tls1.3"}, []string{"X_MIN_VERSION"}},
		{"negative reload", tlsx.ServerConfig{ReloadCheckMs: -1}, []string{"X_RELOAD_CHECK_MS: -1 out of range"}},
		{"reload too long", tlsx.ServerConfig{ReloadCheckMs: tlsx.ReloadCheckMsMax + 1}, []string{"X_RELOAD_CHECK_MS"}},
		{"require without CA", tlsx.ServerConfig{CertFile: cert, KeyFile: key, RequireClientCert: true}, []string{"X_CLIENT_CA_FILE: empty while X_REQUIRE_CLIENT_CERT"}},
		{"client CA with TLS off", tlsx.ServerConfig{ClientCAFile: ca.CertFile()}, []string{"X_CERT_FILE: empty (TLS off)"}},
		{"client CA missing", tlsx.ServerConfig{CertFile: cert, KeyFile: key, ClientCAFile: missing}, []string{"X_CLIENT_CA_FILE: open " + missing}},
		{"client CA junk", tlsx.ServerConfig{CertFile: cert, KeyFile: key, ClientCAFile: junk}, []string{"X_CLIENT_CA_FILE: " + junk + ": no PEM certificate"}},
		{"every problem joined", tlsx.ServerConfig{KeyFile: key, RequireClientCert: true, MinVersion: "1.0", ReloadCheckMs: -5},
			[]string{"X_CERT_FILE: empty while", "X_CLIENT_CA_FILE: empty while", "X_MIN_VERSION", "X_RELOAD_CHECK_MS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.ValidateEnv("X_")
			checkErr(t, err, tc.want)
			if _, berr := tc.cfg.Build(); (berr == nil) != (len(tc.want) == 0) {
				t.Errorf("Build error %v disagrees with Validate %v", berr, err)
			}
		})
	}
}

func TestClientConfigValidate(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	cert, key := ca.Issue(t, "client")
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		name string
		cfg  tlsx.ClientConfig
		want []string
	}{
		{"off", tlsx.ClientConfig{}, nil},
		{"system roots", tlsx.ClientConfig{Enabled: true}, nil},
		{"CA and client cert", tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), CertFile: cert, KeyFile: key, ServerName: "kafka"}, nil},
		{"insecure", tlsx.ClientConfig{Enabled: true, InsecureSkipVerify: true}, nil},
		{"CA without enabled", tlsx.ClientConfig{CAFile: ca.CertFile()}, []string{"X_ENABLED: false while other X_* settings are set"}},
		{"insecure without enabled", tlsx.ClientConfig{InsecureSkipVerify: true}, []string{"X_ENABLED"}},
		{"missing CA", tlsx.ClientConfig{Enabled: true, CAFile: missing}, []string{"X_CA_FILE: open " + missing}},
		{"key without cert", tlsx.ClientConfig{Enabled: true, KeyFile: key}, []string{"X_CERT_FILE: empty while X_KEY_FILE"}},
		{"cert without key", tlsx.ClientConfig{Enabled: true, CertFile: cert}, []string{"X_KEY_FILE: empty while X_CERT_FILE"}},
		{"missing key", tlsx.ClientConfig{Enabled: true, CertFile: cert, KeyFile: missing}, []string{"X_KEY_FILE: stat " + missing}},
		{"insecure with CA", tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), InsecureSkipVerify: true}, []string{"X_INSECURE_SKIP_VERIFY: true while X_CA_FILE"}},
		{"every problem joined", tlsx.ClientConfig{Enabled: true, CAFile: missing, KeyFile: key},
			[]string{"X_CA_FILE", "X_CERT_FILE: empty while"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.ValidateEnv("X_")
			checkErr(t, err, tc.want)
			tlsCfg, berr := tc.cfg.Build()
			if (berr == nil) != (len(tc.want) == 0) {
				t.Errorf("Build error %v disagrees with Validate %v", berr, err)
			}
			if berr == nil && (tlsCfg != nil) != tc.cfg.Enabled {
				t.Errorf("Build returned %v for Enabled=%v", tlsCfg, tc.cfg.Enabled)
			}
		})
	}
}

func checkErr(t *testing.T, err error, want []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error, want %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}
