package tlsx_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/caarlos0/env/v11"

	"github.com/tallyhq/tally/shared/tlsx"
	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

// serviceConfig embeds the TLS settings the way a service's Config does.
type serviceConfig struct {
	Listen        string            `env:"ADMITTER_LISTEN" envDefault:"127.0.0.1:8081"`
	TLS           tlsx.ServerConfig `envPrefix:"ADMITTER_TLS_"`
	KafkaTLS      tlsx.ClientConfig `envPrefix:"KAFKA_TLS_"`
	ClickHouseTLS tlsx.ClientConfig `envPrefix:"CLICKHOUSE_TLS_"`
}

func parse(t *testing.T, environ map[string]string) (serviceConfig, error) {
	t.Helper()
	var cfg serviceConfig
	err := env.ParseWithOptions(&cfg, env.Options{Environment: environ})
	return cfg, err
}

func TestEnvDefaults(t *testing.T) {
	cfg, err := parse(t, map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	want := serviceConfig{Listen: "127.0.0.1:8081", TLS: tlsx.ServerConfig{MinVersion: "1.2", ReloadCheckMs: tlsx.DefaultReloadCheckMs}}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("defaults: got %+v, want %+v", cfg, want)
	}
	if cfg.TLS.Enabled() || cfg.KafkaTLS.Enabled || cfg.ClickHouseTLS.Enabled {
		t.Fatal("TLS on by default")
	}
	if err := cfg.TLS.ValidateEnv("ADMITTER_TLS_"); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestEnvPrefixes(t *testing.T) {
	cfg, err := parse(t, map[string]string{
		"ADMITTER_TLS_CERT_FILE":              "/etc/tally/tls.crt",
		"ADMITTER_TLS_KEY_FILE":               "/etc/tally/tls.key",
		"ADMITTER_TLS_CLIENT_CA_FILE":         "/etc/tally/clients.pem",
		"ADMITTER_TLS_REQUIRE_CLIENT_CERT":    "true",
		"ADMITTER_TLS_MIN_VERSION":            "1.3",
		"ADMITTER_TLS_RELOAD_CHECK_MS":        "250",
		"KAFKA_TLS_ENABLED":                   "true",
		"KAFKA_TLS_CA_FILE":                   "/etc/kafka/ca.pem",
		"KAFKA_TLS_CERT_FILE":                 "/etc/kafka/client.crt",
		"KAFKA_TLS_KEY_FILE":                  "/etc/kafka/client.key",
		"KAFKA_TLS_SERVER_NAME":               "kafka.internal",
		"CLICKHOUSE_TLS_ENABLED":              "true",
		"CLICKHOUSE_TLS_INSECURE_SKIP_VERIFY": "true",
		"TLS_CERT_FILE":                       "/unprefixed/is/ignored",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := serviceConfig{
		Listen: "127.0.0.1:8081",
		TLS: tlsx.ServerConfig{CertFile: "/etc/tally/tls.crt", KeyFile: "/etc/tally/tls.key", ClientCAFile: "/etc/tally/clients.pem",
			RequireClientCert: true, MinVersion: "1.3", ReloadCheckMs: 250},
		KafkaTLS: tlsx.ClientConfig{Enabled: true, CAFile: "/etc/kafka/ca.pem", CertFile: "/etc/kafka/client.crt",
			KeyFile: "/etc/kafka/client.key", ServerName: "kafka.internal"},
		ClickHouseTLS: tlsx.ClientConfig{Enabled: true, InsecureSkipVerify: true},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
}

func TestEnvBadValues(t *testing.T) {
	// caarlos0/env names the Go field, not the variable, in parse errors.
	if _, err := parse(t, map[string]string{"ADMITTER_TLS_REQUIRE_CLIENT_CERT": "maybe"}); err == nil ||
		!strings.Contains(err.Error(), "RequireClientCert") {
		t.Fatalf("bad bool: %v", err)
	}
	if _, err := parse(t, map[string]string{"ADMITTER_TLS_RELOAD_CHECK_MS": "5s"}); err == nil {
		t.Fatal("bad int accepted")
	}
	// Parsed but invalid: Validate names the prefixed variables.
	ca := tlsxtest.NewCA(t)
	_, key := ca.Issue(t, "x")
	cfg, err := parse(t, map[string]string{"ADMITTER_TLS_KEY_FILE": key, "ADMITTER_TLS_MIN_VERSION": "1.1", "KAFKA_TLS_CA_FILE": ca.CertFile()})
	if err != nil {
		t.Fatal(err)
	}
	checkErr(t, cfg.TLS.ValidateEnv("ADMITTER_TLS_"), []string{"ADMITTER_TLS_CERT_FILE: empty while ADMITTER_TLS_KEY_FILE is set", "ADMITTER_TLS_MIN_VERSION"})
	checkErr(t, cfg.KafkaTLS.ValidateEnv("KAFKA_TLS_"), []string{"KAFKA_TLS_ENABLED: false"})
}
