// Package kafkax holds Tally's Kafka conventions on top of segmentio/kafka-go: topic names,
// topic creation, and writer and reader settings with every trap-laden default set explicitly.
package kafkax

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/backoff"
	"github.com/tallyhq/tally/shared/tlsx"
)

// Topics names every topic Tally uses. All names share one prefix (setting TALLY_TOPIC_PREFIX,
// default "tally."), so several pipelines, or several test runs, can share one cluster.
type Topics struct {
	// Events carries the input events: request.*, credits.*, account.updated, abuse.flagged.
	Events string
	// Journal carries the ledger's outputs: ledger.entry and request.expired.
	Journal string
	// Balances is compacted: the latest balance.updated per account.
	Balances string
	// Limits is compacted: the latest limits.adjusted per key.
	Limits string
	// DeadLetter holds messages no consumer could read, with the reason in a header.
	DeadLetter string
	// LedgerState is compacted: the ledger's state snapshots with their source offsets.
	LedgerState string
	// Notifications carries what the ledger tells customers and operators: threshold
	// notifications and top-up requests, read by the webhook dispatcher (and anyone else).
	Notifications string
}

// DefaultPrefix is the default topic prefix.
const DefaultPrefix = "tally."

// NewTopics returns the topic names under prefix.
func NewTopics(prefix string) Topics {
	return Topics{
		Events: prefix + "events", Journal: prefix + "journal", Balances: prefix + "balances",
		Limits: prefix + "limits", DeadLetter: prefix + "deadletter", LedgerState: prefix + "ledger.state",
		Notifications: prefix + "notifications",
	}
}

// Headers a dead-lettered message carries.
const (
	HeaderDLQReason    = "tally-dlq-reason"
	HeaderDLQTopic     = "tally-dlq-topic"
	HeaderDLQPartition = "tally-dlq-partition"
	HeaderDLQOffset    = "tally-dlq-offset"
	HeaderDLQConsumer  = "tally-dlq-consumer"
)

// Specs returns the topic configurations, retention set explicitly on every topic (never the
// broker's default, 7 days on Apache Kafka):
//   - events, journal, notifications and deadletter are kept (retention.ms=-1, retention.bytes=-1): the
//     ledger's state, tallyctl reconcile and statements replay events and journal from
//     offset 0, and the dead letters are the record of what was not applied;
//   - balances, limits and ledger.state are compacted: the latest value per key is kept.
func (t Topics) Specs(partitions, replication int) []kafka.TopicConfig {
	kept := []kafka.ConfigEntry{
		{ConfigName: "cleanup.policy", ConfigValue: "delete"},
		{ConfigName: "retention.ms", ConfigValue: "-1"},
		{ConfigName: "retention.bytes", ConfigValue: "-1"},
	}
	compact := []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}}
	mk := func(name string, cfg []kafka.ConfigEntry) kafka.TopicConfig {
		return kafka.TopicConfig{Topic: name, NumPartitions: partitions, ReplicationFactor: replication, ConfigEntries: cfg}
	}
	return []kafka.TopicConfig{
		mk(t.Events, kept), mk(t.Journal, kept), mk(t.DeadLetter, kept), mk(t.Notifications, kept),
		mk(t.Balances, compact), mk(t.Limits, compact), mk(t.LedgerState, compact),
	}
}

// EnsureTopics creates the topics that do not exist yet, and sets the configs of the specs
// (retention, cleanup policy) on those that do, so a topic an older version created with
// the broker's defaults gets them too; other configs and the partition count stay as they
// are. It speaks plaintext; EnsureTopicsTLS is the same over TLS.
func EnsureTopics(ctx context.Context, brokers []string, specs []kafka.TopicConfig) error {
	return EnsureTopicsTLS(ctx, brokers, nil, specs)
}

// EnsureTopicsTLS is EnsureTopics with tc (nil = plaintext), e.g. the Build() of the
// KAFKA_TLS_* settings (tlsx.ClientConfig).
func EnsureTopicsTLS(ctx context.Context, brokers []string, tc *tls.Config, specs []kafka.TopicConfig) error {
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		if lastErr = ensureOnce(ctx, NewClient(brokers, tc), specs); lastErr == nil {
			return nil
		}
		if !backoff.Sleep(ctx, 250*time.Millisecond) {
			return fmt.Errorf("kafkax: ensure topics: %w (last error: %v)", ctx.Err(), lastErr)
		}
	}
	return fmt.Errorf("kafkax: ensure topics: %w", lastErr)
}

func ensureOnce(ctx context.Context, c *kafka.Client, specs []kafka.TopicConfig) error {
	res, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: specs})
	if err != nil {
		return err
	}
	var errs []error
	var alter []kafka.IncrementalAlterConfigsRequestResource
	for _, spec := range specs {
		e := res.Errors[spec.Topic]
		switch {
		case errors.Is(e, kafka.TopicAlreadyExists):
			if len(spec.ConfigEntries) == 0 {
				continue
			}
			r := kafka.IncrementalAlterConfigsRequestResource{ResourceType: kafka.ResourceTypeTopic, ResourceName: spec.Topic}
			for _, ce := range spec.ConfigEntries {
				r.Configs = append(r.Configs, kafka.IncrementalAlterConfigsRequestConfig{
					Name: ce.ConfigName, Value: ce.ConfigValue, ConfigOperation: kafka.ConfigOperationSet})
			}
			alter = append(alter, r)
		case e != nil:
			errs = append(errs, fmt.Errorf("%s: %w", spec.Topic, e))
		}
	}
	if len(errs) > 0 || len(alter) == 0 {
		return errors.Join(errs...)
	}
	ares, err := c.IncrementalAlterConfigs(ctx, &kafka.IncrementalAlterConfigsRequest{Resources: alter})
	if err != nil {
		return fmt.Errorf("set topic configs: %w", err)
	}
	for _, r := range ares.Resources {
		if r.Error != nil {
			errs = append(errs, fmt.Errorf("%s: set configs: %w", r.ResourceName, r.Error))
		}
	}
	return errors.Join(errs...)
}

// WriterConfig bounds a writer.
type WriterConfig struct {
	// BatchTimeout is how long a partial batch waits before it is sent. kafka-go's default is
	// 1 s, which would add a second to every synchronous write: Tally uses a few ms.
	BatchTimeout time.Duration
	// BatchSize is the most messages in one produce request.
	BatchSize int
	// WriteTimeout bounds one produce request.
	WriteTimeout time.Duration
	// AttemptsMax bounds retries of one batch.
	AttemptsMax int
	// TLS, when not nil, is the client TLS config the writer dials the brokers with (the
	// Build() of the KAFKA_TLS_* settings); nil = plaintext.
	TLS *tls.Config
}

// DefaultWriterConfig: 2 ms batches of at most 1000 messages, 10 s write timeout, 3 attempts.
var DefaultWriterConfig = WriterConfig{BatchTimeout: 2 * time.Millisecond, BatchSize: 1000, WriteTimeout: 10 * time.Second, AttemptsMax: 3}

// NewWriter returns a writer for topic ("" = each message names its topic) that waits for
// acks=all, so a successful WriteMessages means the events are durable.
func NewWriter(brokers []string, topic string, cfg WriterConfig) *kafka.Writer {
	return &kafka.Writer{
		Addr:  kafka.TCP(brokers...),
		Topic: topic,
		// Murmur2 is the Java client's partitioner: every Tally producer puts an account on the
		// same partition as a Java producer would.
		Balancer: &kafka.Murmur2Balancer{},
		// The zero value is RequireNone (fire-and-forget): billing needs acks=all.
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: cfg.BatchTimeout,
		BatchSize:    cfg.BatchSize,
		// Kafka's default message.max.bytes is 1 MiB; a batch above it is refused.
		BatchBytes:   1_000_000,
		WriteTimeout: cfg.WriteTimeout,
		ReadTimeout:  cfg.WriteTimeout,
		MaxAttempts:  cfg.AttemptsMax,
		// Topics are created explicitly by EnsureTopics with their partition counts.
		AllowAutoTopicCreation: false,
		// A writer asks for its topic's partitions on every message: answer from a cache.
		Transport: newMetadataCache(Transport(cfg.TLS)),
	}
}

// Transport returns the kafka-go Transport for writers and kafka.Client over tc: nil (kafka-go's
// DefaultTransport) when tc is nil, otherwise tlsx.KafkaTransport(tc).
func Transport(tc *tls.Config) kafka.RoundTripper {
	if tc == nil {
		return nil
	}
	return tlsx.KafkaTransport(tc)
}

// Dialer returns the kafka-go Dialer for readers, consumer groups and direct connections over
// tc: kafka.DefaultDialer when tc is nil, otherwise tlsx.KafkaDialer(tc).
func Dialer(tc *tls.Config) *kafka.Dialer {
	if tc == nil {
		return kafka.DefaultDialer
	}
	return tlsx.KafkaDialer(tc)
}

// NewClient returns a kafka.Client (topic creation, metadata, offsets) for brokers over tc
// (nil = plaintext), each request bounded by 10 s.
func NewClient(brokers []string, tc *tls.Config) *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: Transport(tc)}
}

// ParseBrokers splits a comma-separated broker list and checks each host:port.
func ParseBrokers(s string) ([]string, error) {
	var out []string
	for _, b := range strings.Split(s, ",") {
		b = strings.TrimSpace(b)
		if b == "" {
			continue
		}
		host, port, err := net.SplitHostPort(b)
		if err != nil || host == "" {
			return nil, fmt.Errorf("broker %q: want host:port", b)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("broker %q: bad port", b)
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		return nil, errors.New("no brokers")
	}
	return out, nil
}

// DeadLetter publishes msg to the dead-letter topic with the reason and its origin in headers.
func DeadLetter(ctx context.Context, w *kafka.Writer, topic, consumer string, msg kafka.Message, reason string) error {
	if len(reason) > 4096 {
		reason = reason[:4096]
	}
	dl := kafka.Message{
		Topic: topic,
		Key:   msg.Key,
		Value: msg.Value,
		Headers: []kafka.Header{
			{Key: HeaderDLQReason, Value: []byte(reason)},
			{Key: HeaderDLQTopic, Value: []byte(msg.Topic)},
			{Key: HeaderDLQPartition, Value: []byte(strconv.Itoa(msg.Partition))},
			{Key: HeaderDLQOffset, Value: []byte(strconv.FormatInt(msg.Offset, 10))},
			{Key: HeaderDLQConsumer, Value: []byte(consumer)},
		},
	}
	if err := w.WriteMessages(ctx, dl); err != nil {
		return fmt.Errorf("kafkax: dead-letter %s/%d/%d: %w", msg.Topic, msg.Partition, msg.Offset, err)
	}
	return nil
}

// ShortErr reduces kafka-go's per-message WriteErrors (one entry per message) to a count and
// the first error, so that a failed batch reads as one line. Other errors pass through.
func ShortErr(err error) error {
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil {
				return fmt.Errorf("%d of %d messages failed, first: %w", we.Count(), len(we), e)
			}
		}
	}
	return err
}
