package kafkax_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/tlsx"
	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

// TestTLSHelpers runs a TLS-only broker (kfake; the real broker here is plaintext) that
// requires client certificates, then creates every topic with EnsureTopicsTLS, writes with
// NewWriter(WriterConfig.TLS) and reads back through a consumer group using Dialer: the
// helpers each service uses for KAFKA_TLS_*. A plaintext EnsureTopics against the same
// broker fails instead of hanging.
func TestTLSHelpers(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	cert, key := ca.Issue(t, "127.0.0.1")
	serverTLS, err := tlsx.ServerConfig{CertFile: cert, KeyFile: key, ClientCAFile: ca.CertFile(), RequireClientCert: true}.Build()
	if err != nil {
		t.Fatal(err)
	}
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(serverTLS))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	brokers := fake.ListenAddrs()
	ccert, ckey := ca.Issue(t, "client")
	clientTLS, err := tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), CertFile: ccert, KeyFile: ckey}.Build()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	topics := kafkax.NewTopics("tls.")
	if err := kafkax.EnsureTopicsTLS(ctx, brokers, clientTLS, topics.Specs(2, 1)); err != nil {
		t.Fatalf("ensure topics over TLS: %v", err)
	}
	wc := kafkax.DefaultWriterConfig
	wc.TLS = clientTLS
	w := kafkax.NewWriter(brokers, topics.Events, wc)
	defer w.Close()
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("acct"), Value: []byte("v1")}); err != nil {
		t.Fatalf("write over TLS: %v", err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, GroupID: "tls-group", Topic: topics.Events,
		StartOffset: kafka.FirstOffset, MaxWait: 100 * time.Millisecond, Dialer: kafkax.Dialer(clientTLS)})
	defer r.Close()
	m, err := r.FetchMessage(ctx)
	if err != nil || string(m.Value) != "v1" {
		t.Fatalf("read over TLS: %q %v", m.Value, err)
	}
	if err := r.CommitMessages(ctx, m); err != nil {
		t.Fatalf("commit over TLS: %v", err)
	}
	res, err := kafkax.NewClient(brokers, clientTLS).Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topics.Events}})
	if err != nil || len(res.Topics) != 1 || len(res.Topics[0].Partitions) != 2 {
		t.Fatalf("metadata over TLS: %+v %v", res, err)
	}

	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	defer pcancel()
	if err := kafkax.EnsureTopics(pctx, brokers, topics.Specs(2, 1)); err == nil {
		t.Fatal("plaintext client accepted by a TLS-only broker")
	}
	if kafkax.Dialer(nil) != kafka.DefaultDialer || kafkax.Transport(nil) != nil {
		t.Fatal("nil TLS must keep kafka-go's plaintext defaults")
	}
}
