package tlsx

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/segmentio/kafka-go"
)

// KafkaDialTimeout bounds one broker connection: TCP connect, TLS handshake and, for the
// Transport, the first ApiVersions round trip. A TLS client facing a plaintext broker that
// waits for more bytes (kfake does) fails after this long instead of hanging.
const KafkaDialTimeout = 10 * time.Second

// KafkaTransport returns a kafka-go Transport (for kafka.Writer.Transport and kafka.Client)
// that speaks TLS with c, or plaintext when c is nil. Settings are explicit: 10 s dial
// timeout, 30 s idle connections, 6 s metadata TTL (kafka-go's defaults but for the dial
// timeout). With TLS, the handshake is done in the dial function so that a failure is
// reported as "tlsx: TLS handshake with <broker>: ..." rather than as a bare EOF or timeout.
func KafkaTransport(c *tls.Config) *kafka.Transport {
	t := &kafka.Transport{DialTimeout: KafkaDialTimeout, IdleTimeout: 30 * time.Second, MetadataTTL: 6 * time.Second}
	if c != nil {
		t.Dial = tlsDial(c)
	}
	return t
}

// KafkaDialer returns a kafka-go Dialer (for kafka.ReaderConfig.Dialer) that speaks TLS with c,
// or plaintext when c is nil; 10 s dial timeout, dual stack as kafka.DefaultDialer.
func KafkaDialer(c *tls.Config) *kafka.Dialer {
	d := &kafka.Dialer{Timeout: KafkaDialTimeout, DualStack: true}
	if c != nil {
		d.DialFunc = tlsDial(c)
	}
	return d
}

// tlsDial connects and completes the TLS handshake within ctx (which kafka-go bounds by the
// dial timeout) and, also, within KafkaDialTimeout. When c has no ServerName the host
// dialled is verified, as kafka-go does.
func tlsDial(c *tls.Config) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, KafkaDialTimeout)
		defer cancel()
		cfg := c
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				host = address
			}
			cfg = c.Clone()
			cfg.ServerName = host
		}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: KafkaDialTimeout}, Config: cfg}
		conn, err := d.DialContext(ctx, network, address)
		if err != nil {
			return nil, fmt.Errorf("tlsx: TLS handshake with %s (is the listener plaintext, or the CA wrong?): %w", address, err)
		}
		return conn, nil
	}
}
