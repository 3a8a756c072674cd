package admitter

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/backoff"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Bounds of the state followers.
const (
	// followFetchBytesMax bounds one fetch from a compacted topic.
	followFetchBytesMax = 4 << 20
	// followMaxWait is how long the broker may hold a fetch open when there is nothing new:
	// it bounds how late a live balance or limit change is seen.
	followMaxWait = 50 * time.Millisecond
	// followBatchMinBytes is the peer follower's fetch MinBytes with one admitter instance.
	followBatchMinBytes = 256 << 10
	// followRetry is the pause before retrying a failed metadata or offsets request.
	followRetry = 500 * time.Millisecond
)

// follow loads one compacted topic from its start and then follows it live. loaded is called
// once every partition has been read up to the end it had when following began.
func (s *Service) follow(ctx context.Context, topic string, loaded func()) {
	var ends map[int]int64
	for {
		var err error
		if ends, err = partitionEnds(ctx, s.kafkaClient(), topic); err == nil {
			break
		}
		s.log.Warn("state topic not reachable; retrying", "topic", topic, "err", err)
		if !backoff.Sleep(ctx, followRetry) {
			return
		}
	}
	remaining := make(chan struct{}, len(ends))
	done := make(chan struct{})
	for p, end := range ends {
		go func() {
			defer func() { done <- struct{}{} }()
			s.followPartition(ctx, topic, p, end, func() { remaining <- struct{}{} })
		}()
	}
	for range ends {
		select {
		case <-remaining:
		case <-ctx.Done():
		}
	}
	if ctx.Err() == nil {
		loaded()
	}
	for range ends {
		<-done
	}
}

func (s *Service) followPartition(ctx context.Context, topic string, partition int, end int64, loaded func()) {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: s.brokers, Topic: topic, Partition: partition,
		MinBytes: 1, MaxBytes: followFetchBytesMax, MaxWait: followMaxWait, StartOffset: kafka.FirstOffset,
		Dialer: kafkax.Dialer(s.kafkaTLS)})
	defer r.Close()
	isLoaded := false
	if end <= 0 {
		loaded()
		isLoaded = true
	}
	for {
		msg, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("state topic read failed; retrying", "topic", topic, "partition", partition, "err", err)
			if !backoff.Sleep(ctx, followRetry) {
				return
			}
			continue
		}
		s.applyState(ctx, topic, msg)
		if !isLoaded && msg.Offset+1 >= end {
			loaded()
			isLoaded = true
		}
	}
}

// applyState folds one balance.updated or limits.adjusted; anything else is dead-lettered.
func (s *Service) applyState(ctx context.Context, topic string, msg kafka.Message) {
	if msg.Value == nil {
		return // a compaction tombstone
	}
	ev, err := events.Decode(msg.Value)
	if err == nil {
		switch p := ev.Payload.(type) {
		case events.BalanceUpdated:
			if topic == s.topics.Balances {
				s.mu.Lock()
				ok := s.table.ApplyBalance(&p)
				s.mu.Unlock()
				if !ok {
					s.log.Error("account table full; balance not cached", "account_id", p.AccountID)
				}
				s.m.stateEvents.WithLabelValues("balances").Inc()
				return
			}
		case events.LimitsAdjusted:
			if topic == s.topics.Limits {
				s.mu.Lock()
				ok := s.table.ApplyLimits(&p)
				s.mu.Unlock()
				if !ok {
					s.log.Error("account table full; limit not cached", "account_id", p.AccountID)
				}
				s.m.stateEvents.WithLabelValues("limits").Inc()
				return
			}
		}
		err = fmt.Errorf("unexpected event type %s on %s", ev.Type, topic)
	}
	s.m.deadLettered.Inc()
	if dlErr := kafkax.DeadLetter(ctx, s.dlq, s.topics.DeadLetter, s.source, msg, err.Error()); dlErr != nil {
		s.log.Error("dead-letter failed", "topic", topic, "offset", msg.Offset, "reason", err, "err", dlErr)
	}
}

// partitionEnds returns each partition's end offset (the next offset to be written).
func partitionEnds(ctx context.Context, c *kafka.Client, topic string) (map[int]int64, error) {
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata %s: %w", topic, err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) == 0 {
		return nil, fmt.Errorf("metadata %s: topic missing (%v)", topic, md.Topics)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	lo, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("list offsets %s: %w", topic, err)
	}
	ends := map[int]int64{}
	for _, po := range lo.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("list offsets %s/%d: %w", topic, po.Partition, po.Error)
		}
		ends[po.Partition] = po.LastOffset
	}
	return ends, nil
}
