package tlsx_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
	"github.com/tallyhq/tally/shared/tlsx"
	"github.com/tallyhq/tally/shared/tlsx/tlsxtest"
)

// kafkaTestTimeout is far above KafkaDialTimeout: reaching it means a client hung.
const kafkaTestTimeout = 60 * time.Second

// TestKafkaTLSAgainstPlaintextFailsFast: a TLS writer, and a TLS dialer, pointed at a
// plaintext listener (kfake, or the real broker with KAFKA_BROKERS) return a TLS handshake
// error naming the broker before the caller's deadline, instead of hanging.
func TestKafkaTLSAgainstPlaintextFailsFast(t *testing.T) {
	cluster := kafkatest.Start(t)
	ca := tlsxtest.NewCA(t)
	clientTLS := mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile()})

	t.Run("writer", func(t *testing.T) {
		t.Parallel()
		w := &kafka.Writer{
			Addr: kafka.TCP(cluster.Brokers...), Topic: cluster.Topics.Events, Transport: tlsx.KafkaTransport(clientTLS),
			RequiredAcks: kafka.RequireAll, BatchTimeout: 2 * time.Millisecond,
			MaxAttempts: 1, // one attempt: the test judges the error, not kafka-go's retries
		}
		defer w.Close()
		ctx, cancel := context.WithTimeout(context.Background(), kafkaTestTimeout)
		defer cancel()
		err := w.WriteMessages(ctx, kafka.Message{Key: []byte("acct-1"), Value: []byte("{}")})
		checkHandshakeErr(t, ctx, err)
	})
	t.Run("dialer", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), kafkaTestTimeout)
		defer cancel()
		conn, err := tlsx.KafkaDialer(clientTLS).DialContext(ctx, "tcp", cluster.Brokers[0])
		if err == nil {
			conn.Close()
		}
		checkHandshakeErr(t, ctx, err)
	})
}

func checkHandshakeErr(t *testing.T, ctx context.Context, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("TLS client talked to a plaintext broker")
	}
	if ctx.Err() != nil {
		t.Fatalf("hung until the test deadline: %v", err)
	}
	if !strings.Contains(err.Error(), "tlsx: TLS handshake with ") {
		t.Fatalf("error %q does not say the TLS handshake failed", err)
	}
	t.Logf("reported: %v", err)
}

// TestKafkaOverMutualTLS runs a TLS-only broker (kfake: the real broker here is plaintext)
// whose listener is built from tlsx.ServerConfig with RequireClientCert, then creates a
// topic through KafkaTransport, writes through it and reads back through KafkaDialer. A
// client without a certificate is refused.
func TestKafkaOverMutualTLS(t *testing.T) {
	ca := tlsxtest.NewCA(t)
	brokerCert, brokerKey := ca.Issue(t, "127.0.0.1", "localhost")
	serverTLS := mustServer(t, tlsx.ServerConfig{CertFile: brokerCert, KeyFile: brokerKey, ClientCAFile: ca.CertFile(), RequireClientCert: true})
	fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(serverTLS))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	brokers := fake.ListenAddrs()
	clientCert, clientKey := ca.Issue(t, "ledger")
	clientTLS := mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile(), CertFile: clientCert, KeyFile: clientKey})
	ctx, cancel := context.WithTimeout(context.Background(), kafkaTestTimeout)
	defer cancel()

	const topic = "tlsx-test"
	admin := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tlsx.KafkaTransport(clientTLS), Timeout: 10 * time.Second}
	res, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: 1, ReplicationFactor: 1}}})
	if err != nil || res.Errors[topic] != nil {
		t.Fatalf("create topic over TLS: %v %v", err, res)
	}

	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic, Transport: tlsx.KafkaTransport(clientTLS),
		RequiredAcks: kafka.RequireAll, BatchTimeout: 2 * time.Millisecond, MaxAttempts: 3}
	defer w.Close()
	const n = 3
	var msgs []kafka.Message
	for i := range n {
		msgs = append(msgs, kafka.Message{Key: []byte("acct"), Value: []byte(fmt.Sprint(i))})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("write over TLS: %v", err)
	}

	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: 0, Dialer: tlsx.KafkaDialer(clientTLS),
		MaxWait: 100 * time.Millisecond, MaxBytes: 1 << 20})
	defer r.Close()
	for i := range n {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read %d over TLS: %v", i, err)
		}
		if string(m.Value) != fmt.Sprint(i) {
			t.Fatalf("message %d: %q", i, m.Value)
		}
	}

	// Same CA, no client certificate: the broker refuses the handshake.
	anon := mustClient(t, tlsx.ClientConfig{Enabled: true, CAFile: ca.CertFile()})
	conn, err := tlsx.KafkaDialer(anon).DialContext(ctx, "tcp", brokers[0])
	if err == nil {
		// TLS 1.3: the client learns of the refusal on its first read.
		_, err = conn.ReadPartitions(topic)
		conn.Close()
	}
	if err == nil || ctx.Err() != nil {
		t.Fatalf("client without a certificate: err %v, ctx %v", err, ctx.Err())
	}
	t.Logf("client without a certificate: %v", err)
}
