package kafkax_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// topicConfig reads the named configs of a topic from the broker.
func topicConfig(t *testing.T, brokers []string, topic string, names ...string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := kafkax.NewClient(brokers, nil).DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{
		Resources: []kafka.DescribeConfigRequestResource{{ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: names}}})
	if err != nil {
		t.Fatalf("describe %s: %v", topic, err)
	}
	out := map[string]string{}
	for _, r := range res.Resources {
		if r.Error != nil {
			t.Fatalf("describe %s: %v", topic, r.Error)
		}
		for _, e := range r.ConfigEntries {
			out[e.ConfigName] = e.ConfigValue
		}
	}
	return out
}

// Finance replays the events and journal topics from offset 0 (reconcile, statements), so
// they must not fall to the broker's default retention (7 days): EnsureTopics sets every
// topic's retention explicitly, on new topics and on topics an older version created.
func TestTopicsKeepTheLogForFinance(t *testing.T) {
	c := kafkatest.Start(t)
	topics := kafkax.NewTopics(c.Prefix + "ret.")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The events topic exists already, as a version without explicit retention made it.
	week := []kafka.ConfigEntry{{ConfigName: "retention.ms", ConfigValue: "604800000"}}
	if err := kafkax.EnsureTopics(ctx, c.Brokers, []kafka.TopicConfig{{Topic: topics.Events, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: week}}); err != nil {
		t.Fatal(err)
	}
	specs := topics.Specs(1, 1)
	if err := kafkax.EnsureTopics(ctx, c.Brokers, specs); err != nil {
		t.Fatal(err)
	}
	if c.Real {
		t.Cleanup(func() {
			names := make([]string, len(specs))
			for i, s := range specs {
				names[i] = s.Topic
			}
			_, _ = kafkax.NewClient(c.Brokers, nil).DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: names})
		})
	}
	// A KRaft broker applies an altered config when it reads the controller's metadata
	// record, a moment after the alter is acknowledged: read until it shows (bounded).
	eventually := func(topic string, ok func(map[string]string) bool, names ...string) map[string]string {
		deadline := time.Now().Add(15 * time.Second)
		for {
			got := topicConfig(t, c.Brokers, topic, names...)
			if ok(got) || time.Now().After(deadline) {
				return got
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	kept := func(got map[string]string) bool {
		return got["retention.ms"] == "-1" && got["retention.bytes"] == "-1" && got["cleanup.policy"] == "delete"
	}
	for _, topic := range []string{topics.Events, topics.Journal, topics.DeadLetter, topics.Notifications} {
		if got := eventually(topic, kept, "retention.ms", "retention.bytes", "cleanup.policy"); !kept(got) {
			t.Errorf("%s: %v, want retention.ms=-1 retention.bytes=-1 cleanup.policy=delete (kept)", topic, got)
		}
	}
	compact := func(got map[string]string) bool { return got["cleanup.policy"] == "compact" }
	for _, topic := range []string{topics.Balances, topics.Limits, topics.LedgerState} {
		if got := eventually(topic, compact, "cleanup.policy"); !compact(got) {
			t.Errorf("%s: %v, want cleanup.policy=compact (the latest value per key, kept)", topic, got)
		}
	}
}
