package admitter

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/tlsx"
	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

// TestHTTPSWithClientCertificates runs the admitter with ADMITTER_TLS_* set (certificates from
// a throwaway CA, client certificates required): a client trusting the CA and presenting a
// certificate is served, and its admit is decided; a client without a certificate, a client
// not trusting the CA and a plaintext client are refused.
func TestHTTPSWithClientCertificates(t *testing.T) {
	c := kafkatest.Start(t)
	ca := tlsxtest.NewCA(t)
	cert, key := ca.Issue(t, "127.0.0.1")
	cfg := testConfig(t, c)
	cfg.TLS = tlsx.ServerConfig{CertFile: cert, KeyFile: key, ClientCAFile: ca.CertFile(), RequireClientCert: true,
		MinVersion: "1.2", ReloadCheckMs: tlsx.DefaultReloadCheckMs}
	seed(t, c, bal("acct-tls", "wide", 10_000_000))
	s := start(t, cfg)
	if !strings.HasPrefix(s.URL(), "https://") {
		t.Fatalf("URL %q is not https", s.URL())
	}
	ccert, ckey := ca.Issue(t, "edge-client")
	pair, err := tls.LoadX509KeyPair(ccert, ckey)
	if err != nil {
		t.Fatal(err)
	}
	client := func(tc *tls.Config) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	}
	good := client(&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{pair}})

	resp, err := good.Get(s.URL() + "/healthz")
	if err != nil {
		t.Fatalf("mutual TLS client refused: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("healthz over TLS: %d, tls %v", resp.StatusCode, resp.TLS != nil)
	}
	req, _ := http.NewRequest(http.MethodPost, s.URL()+"/v1/admit",
		strings.NewReader(`{"request_id":"r-tls-1","account_id":"acct-tls","endpoint":"codex.responses","estimate":{"tokens_in":10}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+testSecret)
	if resp, err = good.Do(req); err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"allowed":true`) {
		t.Fatalf("admit over TLS: %d %s", resp.StatusCode, body)
	}

	// Trusts the CA, no client certificate: the handshake (TLS 1.3: the first read) fails.
	if resp, err := client(&tls.Config{RootCAs: ca.Pool()}).Get(s.URL() + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("client without a certificate was answered %d", resp.StatusCode)
	}
	// Does not trust the CA: the server's certificate is rejected.
	_, err = client(&tls.Config{Certificates: []tls.Certificate{pair}}).Get(s.URL() + "/healthz")
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("client not trusting the CA: %v, want x509.UnknownAuthorityError", err)
	}
	// Plaintext HTTP to the TLS port is never served.
	if resp, err := http.Get("http://" + s.Addr() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plaintext request served by the TLS listener")
		}
	}
}

// TestTLSSettingsValidated: ADMITTER_TLS_* and KAFKA_TLS_* problems are named by variable and
// stop New.
func TestTLSSettingsValidated(t *testing.T) {
	cfg := DefaultConfig()
	cfg.APIKeys = "k1:" + strings.Repeat("ab", 32)
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.TLS.CertFile = "/nonexistent/cert.pem"
	cfg.KafkaTLS.CAFile = "/nonexistent/ca.pem" // without KAFKA_TLS_ENABLED
	cfg.HTTP.ReadHeaderTimeoutMs = 0
	err := cfg.Validate()
	for _, name := range []string{"ADMITTER_TLS_KEY_FILE", "KAFKA_TLS_ENABLED", "ADMITTER_HTTP_READ_HEADER_TIMEOUT_MS"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
	if _, err := New(cfg, nil); err == nil {
		t.Fatal("New accepted bad TLS settings")
	}
}

// TestKafkaOverTLS runs the admitter against a TLS-only broker that requires client
// certificates (kfake: the real broker here is plaintext), configured through KAFKA_TLS_*:
// the compacted-topic followers, the peer follower, the metadata client and the event
// writers all connect, so it becomes ready and an admit is made durable over TLS.
func TestKafkaOverTLS(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	bcert, bkey := ca.Issue(t, "127.0.0.1")
	brokerTLS, err := tlsx.ServerConfig{CertFile: bcert, KeyFile: bkey, ClientCAFile: ca.CertFile(), RequireClientCert: true}.Build()
	if err != nil {
		t.Fatal(err)
	}
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(brokerTLS), kfake.DefaultNumPartitions(kafkatest.Partitions))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	ccert, ckey := ca.Issue(t, "admitter")
	kc := tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), CertFile: ccert, KeyFile: ckey}
	clientTLS, err := kc.Build()
	if err != nil {
		t.Fatal(err)
	}
	c := &kafkatest.Cluster{Brokers: fake.ListenAddrs(), Prefix: "tls.", Topics: kafkax.NewTopics("tls."), Fake: fake}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := kafkax.EnsureTopicsTLS(ctx, c.Brokers, clientTLS, c.Topics.Specs(kafkatest.Partitions, 1)); err != nil {
		t.Fatal(err)
	}
	wc := kafkax.DefaultWriterConfig
	wc.TLS = clientTLS
	w := kafkax.NewWriter(c.Brokers, c.Topics.Balances, wc)
	ev, _ := events.New("test", time.Now(), bal("acct-ktls", "wide", 10_000_000))
	v, _ := ev.Encode()
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("acct-ktls"), Value: v}); err != nil {
		t.Fatal(err)
	}
	w.Close()

	cfg := testConfig(t, c)
	cfg.KafkaTLS = kc
	s := start(t, cfg)
	a := post(t, s.url+"/v1/admit", testSecret, map[string]any{"request_id": "r-ktls", "account_id": "acct-ktls",
		"endpoint": "codex.responses", "estimate": map[string]any{"tokens_in": 10}})
	if a.status != 200 || !strings.Contains(string(a.body), `"allowed":true`) {
		t.Fatalf("admit over Kafka TLS: %d %s", a.status, a.body)
	}
	found := false
	for p := 0; p < kafkatest.Partitions && !found; p++ {
		lc, err := kafkax.Dialer(clientTLS).DialLeader(ctx, "tcp", c.Brokers[0], c.Topics.Events, p)
		if err != nil {
			t.Fatal(err)
		}
		_, last, err := lc.ReadOffsets()
		lc.Close()
		if err != nil {
			t.Fatal(err)
		}
		found = last > 0
	}
	if !found {
		t.Fatal("no request.started on the events topic")
	}
	// Without KAFKA_TLS_* the same admitter cannot reach the broker: New succeeds (nothing is
	// dialled yet) but it never becomes ready.
	plain := testConfig(t, c)
	ps, err := New(plain, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ps.Run(rctx) }()
	select {
	case <-ps.Ready():
		t.Error("a plaintext admitter became ready against a TLS-only broker")
	case <-time.After(2 * time.Second):
	}
	rcancel()
	<-done
}
