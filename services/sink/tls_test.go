package sink_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tallyhq/tally/services/sink"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/services/sink/pipeline"
	"github.com/tallyhq/tally/shared/chembed/chembedtest"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/tlsx"
	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

// TestTLSEverywhere runs the sink with every link on mutual TLS, certificates from a
// throwaway CA: a TLS-only broker (kfake; the real broker here is plaintext) through
// KAFKA_TLS_*, the real ClickHouse engine behind a TLS listener through CLICKHOUSE_TLS_*, and
// its own endpoints through SINK_TLS_*. Events produced over TLS reach ClickHouse; /healthz
// answers a client with a certificate and refuses one without.
func TestTLSEverywhere(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	srvCert, srvKey := ca.Issue(t, "127.0.0.1")
	mtls := tlsx.ServerConfig{CertFile: srvCert, KeyFile: srvKey, ClientCAFile: ca.CertFile(), RequireClientCert: true,
		MinVersion: "1.2", ReloadCheckMs: tlsx.DefaultReloadCheckMs}
	cliCert, cliKey := ca.Issue(t, "sink")
	client := tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), CertFile: cliCert, KeyFile: cliKey}

	// Kafka: TLS only, client certificates required.
	brokerTLS, err := mtls.Build()
	if err != nil {
		t.Fatal(err)
	}
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(brokerTLS), kfake.DefaultNumPartitions(kafkatest.Partitions))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	clientTLS, err := client.Build()
	if err != nil {
		t.Fatal(err)
	}
	c := &kafkatest.Cluster{Brokers: fake.ListenAddrs(), Prefix: "tls.", Topics: kafkax.NewTopics("tls."), Fake: fake}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := kafkax.EnsureTopicsTLS(ctx, c.Brokers, clientTLS, c.Topics.Specs(kafkatest.Partitions, 1)); err != nil {
		t.Fatal(err)
	}

	// ClickHouse: the embedded engine's HTTP interface behind a mutual-TLS listener.
	ch := chtest.Config(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	chSrv := &http.Server{Handler: chembedtest.Start(t).Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- tlsx.Serve(chSrv, ln, mtls) }()
	t.Cleanup(func() { _ = chSrv.Close(); <-served })
	ch.Addr, ch.TLS = ln.Addr().String(), client

	cfg := testConfig(c, ch)
	cfg.KafkaTLS = client
	cfg.TLS = mtls
	svc, _, _ := start(t, cfg, pipeline.Hooks{})

	const n = 50
	w := kafkax.NewWriter(c.Brokers, "", kafkax.WriterConfig{BatchTimeout: 2 * time.Millisecond, BatchSize: 1000,
		WriteTimeout: 30 * time.Second, AttemptsMax: 3, TLS: clientTLS})
	defer w.Close()
	if err := w.WriteMessages(ctx, testevents.Stream(t, c.Topics, n, 3, time.Now().UTC().Add(-time.Hour))...); err != nil {
		t.Fatal(err)
	}
	conn := openCH(t, ch) // over CLICKHOUSE_TLS_* too
	waitCount(t, conn, "SELECT count() FROM usage_events", 2*n)
	waitCount(t, conn, "SELECT count() FROM ledger_entries", n)

	if !strings.HasPrefix(svc.URL(), "https://") {
		t.Fatalf("URL %q", svc.URL())
	}
	pair, err := tls.LoadX509KeyPair(cliCert, cliKey)
	if err != nil {
		t.Fatal(err)
	}
	good := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{pair}}}}
	resp, err := good.Get(svc.URL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz over TLS: %d", resp.StatusCode)
	}
	anon := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	if resp, err := anon.Get(svc.URL() + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("client without a certificate was answered %d", resp.StatusCode)
	}

	// A sink whose ClickHouse client does not present a certificate cannot start.
	bad := cfg
	bad.ClickHouse.TLS = tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile()}
	bad.ListenAddr = "127.0.0.1:0"
	bs, err := sink.New(bad, nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	if err := bs.Run(rctx); err == nil || rctx.Err() != nil {
		t.Fatalf("sink without a ClickHouse client certificate: %v (ctx %v)", err, rctx.Err())
	}
}

// TestTLSSettingsValidated: SINK_TLS_*, KAFKA_TLS_*, CLICKHOUSE_TLS_* and SINK_HTTP_* problems
// are named.
func TestTLSSettingsValidated(t *testing.T) {
	cfg := sink.DefaultConfig()
	cfg.TLS.CertFile = "/nonexistent/cert.pem"
	cfg.KafkaTLS.InsecureSkipVerify = true // without KAFKA_TLS_ENABLED
	cfg.ClickHouse.TLS.Enabled, cfg.ClickHouse.TLS.CertFile = true, "/nonexistent/cert.pem"
	cfg.HTTP.IdleTimeoutMs = 0
	err := cfg.Validate()
	for _, name := range []string{"SINK_TLS_KEY_FILE", "KAFKA_TLS_ENABLED", "CLICKHOUSE_TLS_KEY_FILE", "SINK_HTTP_IDLE_TIMEOUT_MS"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}
