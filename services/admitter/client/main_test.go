package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tallyhq/tally/services/admitter"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
)

// One admitter serves every test and example of this package: real Kafka when KAFKA_BROKERS
// is set, otherwise an in-process kfake cluster (kafkatest needs a testing.TB, which an
// example does not have, so this is the same logic without it).
var (
	admitterURL string
	brokers     []string
	topics      kafkax.Topics
)

const apiKey = "edge-secret"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if env := os.Getenv("KAFKA_BROKERS"); env != "" {
		b, err := kafkax.ParseBrokers(env)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		brokers = b
	} else {
		fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(4))
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer fake.Close()
		brokers = fake.ListenAddrs()
	}
	prefix := "client-" + uuid.NewString()[:8] + "."
	topics = kafkax.NewTopics(prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := kafkax.EnsureTopics(ctx, brokers, topics.Specs(4, 1)); err != nil {
		fmt.Println(err)
		return 1
	}
	w := kafkax.NewWriter(brokers, topics.Balances, kafkax.DefaultWriterConfig)
	for _, acct := range []string{"acme", "retry-acct"} {
		ev, _ := events.New("test", time.Now(), events.BalanceUpdated{AccountID: acct, Tier: "enterprise",
			Priority: "standard", AvailableMicros: 5_000_000, Offset: -1})
		v, _ := ev.Encode()
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(acct), Value: v}); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	w.Close()
	cfg := admitter.DefaultConfig()
	cfg.KafkaBrokers = strings.Join(brokers, ",")
	cfg.TopicPrefix = prefix
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.APIKeys = "edge:" + httpx.HashSecret(apiKey)
	svc, err := admitter.New(cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(rctx) }()
	defer func() { stop(); <-done }()
	select {
	case <-svc.Ready():
	case <-time.After(30 * time.Second):
		fmt.Println("admitter not ready")
		return 1
	}
	admitterURL = "http://" + svc.Addr()
	return m.Run()
}
