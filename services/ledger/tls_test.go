package ledger_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/tlsx"
	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

// TestTLSEverywhere runs the ledger with LEDGER_TLS_* (HTTPS, client certificates required)
// against a TLS-only broker that also requires client certificates (kfake; the real broker
// here is plaintext), configured with KAFKA_TLS_*. A grant posted over mutual TLS is published,
// consumed by the group, folded and served back, so topic creation, the publisher, the
// consumer group, the restore, the readers and the output writers all spoke TLS. A client
// without a certificate is refused.
func TestTLSEverywhere(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	bcert, bkey := ca.Issue(t, "127.0.0.1")
	brokerTLS, err := tlsx.ServerConfig{CertFile: bcert, KeyFile: bkey, ClientCAFile: ca.CertFile(), RequireClientCert: true}.Build()
	if err != nil {
		t.Fatal(err)
	}
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(brokerTLS), kfake.DefaultNumPartitions(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	ccert, ckey := ca.Issue(t, "ledger")
	cfg := ledger.DefaultConfig()
	cfg.Brokers = fake.ListenAddrs()[0]
	cfg.TopicPrefix = "tls."
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.AdminKeys = "ops:" + hashOf(adminToken)
	cfg.EnsureTopics, cfg.TopicPartitions = true, 2
	cfg.RetryBackoffMs = 100
	cfg.KafkaTLS = tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), CertFile: ccert, KeyFile: ckey}
	scert, skey := ca.Issue(t, "127.0.0.1")
	cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile, cfg.TLS.RequireClientCert = scert, skey, ca.CertFile(), true
	r := start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base, err := r.svc.URL(ctx)
	if err != nil || !strings.HasPrefix(base, "https://") {
		t.Fatalf("URL %q %v", base, err)
	}
	opsCert, opsKey := ca.Issue(t, "ops")
	pair, err := tls.LoadX509KeyPair(opsCert, opsKey)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{pair}}}}
	do := func(method, url string, body string) (int, []byte) {
		req, _ := http.NewRequest(method, url, bytes.NewReader([]byte(body)))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := do("POST", base+"/v1/accounts/acme/grants", `{"grant_id":"g-tls","amount_micros":7000000,"source":"purchase"}`); code != 202 {
		t.Fatalf("grant over TLS: %d %s", code, b)
	}
	var v view.Account
	for {
		code, b := do("GET", base+"/v1/accounts/acme", "")
		if code == 200 {
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			if v.AvailableMicros == 7_000_000 {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("grant never folded over Kafka TLS: last %d %s", code, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	anon := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	if resp, err := anon.Get(base + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("client without a certificate was answered %d", resp.StatusCode)
	}
}

// TestTLSSettingsValidated: LEDGER_TLS_*, KAFKA_TLS_* and LEDGER_HTTP_* problems are named.
func TestTLSSettingsValidated(t *testing.T) {
	cfg := ledger.DefaultConfig()
	cfg.AdminKeys = "ops:" + hashOf("x")
	cfg.TLS.KeyFile = "/nonexistent/key.pem"
	cfg.TLS.RequireClientCert = true
	cfg.KafkaTLS.Enabled, cfg.KafkaTLS.CAFile = true, "/nonexistent/ca.pem"
	cfg.HTTP.ReadTimeoutMs = -1
	err := cfg.Validate()
	for _, name := range []string{"LEDGER_TLS_CERT_FILE", "LEDGER_TLS_CLIENT_CA_FILE", "KAFKA_TLS_CA_FILE", "LEDGER_HTTP_READ_TIMEOUT_MS"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}

func hashOf(s string) string { return httpx.HashSecret(s) }
