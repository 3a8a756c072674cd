package admitter

import (
	"context"
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/admitter/follow"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// followSource is where the followers read (package follow).
func (s *Service) followSource() follow.Source {
	return follow.Source{Brokers: s.brokers, TLS: s.kafkaTLS, Log: s.log}
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
