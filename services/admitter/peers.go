package admitter

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// peerOpen is another admitter's open request, kept until its finish or its hold expiry so
// that the finish can be settled locally. At most ADMITTER_OPEN_MAX are kept.
type peerOpen struct {
	peer        decide.Peer
	expiresAtMs int64
}

// followPeers reads the events topic from its end at start-up and applies the other
// admitters' request.started and request.finished events to the local balances, so that N
// admitters see each other's holds within the topic's propagation delay instead of the
// ledger's fold delay. Its own events (same source) are skipped.
func (s *Service) followPeers(ctx context.Context, positioned func()) {
	var ends map[int]int64
	for {
		var err error
		if ends, err = partitionEnds(ctx, s.kafkaClient(), s.topics.Events); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(followRetry):
		}
	}
	maxP := 0
	for p := range ends {
		maxP = max(maxP, p)
	}
	pos := make([]atomic.Int64, maxP+1)
	for p, end := range ends {
		pos[p].Store(end - 1) // what precedes the start is the ledger's to count
	}
	s.peerPos.Store(&pos)
	positioned() // every event written from now on will be read
	done := make(chan struct{}, len(ends))
	for p, end := range ends {
		go func() {
			defer func() { done <- struct{}{} }()
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: s.brokers, Topic: s.topics.Events, Partition: p,
				MinBytes: s.followMinBytes(), MaxBytes: followFetchMaxBytes, MaxWait: followMaxWait, Dialer: kafkax.Dialer(s.kafkaTLS)})
			defer r.Close()
			if err := r.SetOffset(end); err != nil {
				s.log.Error("peer follower: set offset", "partition", p, "err", err)
				return
			}
			for {
				msg, err := r.FetchMessage(ctx)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					s.log.Warn("peer follower: read failed; retrying", "partition", p, "err", err)
					time.Sleep(followRetry)
					continue
				}
				s.applyPeer(msg)
				pos[p].Store(msg.Offset)
			}
		}()
	}
	for range ends {
		<-done
	}
}

// followMinBytes is the follower's fetch MinBytes. With ADMITTER_INSTANCES>1 a fetch returns
// as soon as anything is new: admissions confirmed in log order wait for the follower, and
// peers' holds count as early as they can. With one instance nothing waits for it (it only
// sees another admitter that runs anyway, e.g. during a rolling deploy), and a fetch
// waits for followBatchMinBytes or followMaxWait: fetching every few records cost the broker
// and this process about a tenth of their CPU at 20,000 admits/s, for events it only skips.
func (s *Service) followMinBytes() int {
	if s.cfg.Instances > 1 {
		return 1
	}
	return followBatchMinBytes
}

func (s *Service) applyPeer(msg kafka.Message) {
	for _, h := range msg.Headers {
		if h.Key == HeaderSource && string(h.Value) == s.source {
			return
		}
	}
	// Unreadable input events are the ledger's to dead-letter; the admitter only skips them.
	ev, err := events.Decode(msg.Value)
	if err != nil || ev.Source == s.source {
		return
	}
	part, off := int32(msg.Partition), msg.Offset
	switch p := ev.Payload.(type) {
	case events.RequestStarted:
		po := peerOpen{peer: decide.Peer{AccountID: p.AccountID, HoldMicros: p.HoldMicros, AllowanceMicros: p.AllowanceMicros,
			Funding: decide.ParseFunding(p.Funding), StartedMs: ev.Time.UnixMilli()}, expiresAtMs: p.HoldExpiresAt.UnixMilli()}
		s.mu.Lock()
		s.table.ApplyPeerStart(&po.peer, part, off)
		if len(s.peers) < s.cfg.OpenMax {
			s.peers[p.RequestID] = po
		}
		s.mu.Unlock()
		s.m.peerEvents.Inc()
	case events.RequestFinished:
		s.mu.Lock()
		if po, ok := s.peers[p.RequestID]; ok {
			delete(s.peers, p.RequestID)
			s.table.ApplyPeerFinish(&po.peer, p.CostMicros, part, off, ev.Time.UnixMilli())
		}
		s.mu.Unlock()
		s.m.peerEvents.Inc()
	}
}

// expirePeersLocked drops at most budget peer requests whose hold expired.
func (s *Service) expirePeersLocked(nowMs int64, budget int) {
	for id, po := range s.peers {
		if budget--; budget < 0 {
			return
		}
		if po.expiresAtMs <= nowMs {
			delete(s.peers, id)
		}
	}
}

// waitPeerPosition waits until the peer follower has applied the events topic's partition up
// to offset, or until deadline; it reports whether it got there.
func (s *Service) waitPeerPosition(partition int32, offset int64, deadline time.Time) bool {
	pp := s.peerPos.Load()
	if pp == nil || int(partition) >= len(*pp) {
		return false
	}
	pos := &(*pp)[partition]
	for pos.Load() < offset {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
	return true
}
