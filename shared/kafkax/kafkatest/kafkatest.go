// Package kafkatest gives tests a Kafka cluster: the brokers in KAFKA_BROKERS when that is set
// (real Apache Kafka in CI), otherwise an in-process kfake cluster. The same test code runs
// both ways. Every call gets a fresh topic prefix, so tests never see each other's data.
package kafkatest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tallyhq/tally/shared/kafkax"
)

// Partitions is the partition count of every test topic.
const Partitions = 4

// Cluster is a broker list plus a fresh, already-created set of topics.
type Cluster struct {
	Brokers []string
	Prefix  string
	Topics  kafkax.Topics
	// Real reports whether the brokers came from KAFKA_BROKERS.
	Real bool
	// Fake is the in-process cluster when Real is false.
	Fake *kfake.Cluster
}

var seq atomic.Int64

// Start returns a cluster with its topics created, cleaned up with the test.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	c := &Cluster{Prefix: fmt.Sprintf("t%d-%s.", seq.Add(1), uuid.NewString()[:8])}
	if env := strings.TrimSpace(os.Getenv("KAFKA_BROKERS")); env != "" {
		brokers, err := kafkax.ParseBrokers(env)
		if err != nil {
			tb.Fatalf("KAFKA_BROKERS: %v", err)
		}
		c.Brokers, c.Real = brokers, true
	} else {
		fake, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(Partitions))
		if err != nil {
			tb.Fatalf("kfake: %v", err)
		}
		tb.Cleanup(fake.Close)
		c.Brokers, c.Fake = fake.ListenAddrs(), fake
	}
	c.Topics = kafkax.NewTopics(c.Prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	specs := c.Topics.Specs(Partitions, 1)
	if err := kafkax.EnsureTopics(ctx, c.Brokers, specs); err != nil {
		tb.Fatalf("create topics: %v", err)
	}
	if c.Real {
		// A shared broker outlives the test: delete its topics so runs do not pile up.
		tb.Cleanup(func() {
			names := make([]string, len(specs))
			for i, s := range specs {
				names[i] = s.Topic
			}
			dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer dcancel()
			cl := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Timeout: 30 * time.Second}
			if _, err := cl.DeleteTopics(dctx, &kafka.DeleteTopicsRequest{Topics: names}); err != nil {
				tb.Logf("delete topics %v: %v", names, err)
			}
		})
	}
	return c
}

// Group returns a consumer group id unique to this cluster's prefix.
func (c *Cluster) Group(name string) string { return c.Prefix + name }
