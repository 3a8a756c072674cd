package admitter

import (
	"encoding/json"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/decide"
	"github.com/tallyhq/tally/services/admitter/follow"
	"github.com/tallyhq/tally/services/admitter/idem"
	"github.com/tallyhq/tally/shared/events"
)

// peerOpen is a request started in the events log by another admitter, or by an earlier
// incarnation of this one, kept so that this admitter can settle its finish and count its
// hold. Open ones are kept until their hold expiry (at most ADMITTER_LOG_OPEN_MAX); finished
// ones (fin set) until their hold expiry or until ADMITTER_IDEMPOTENCY_MAX later finishes
// of such requests push them out, to answer repeats.
type peerOpen struct {
	peer            decide.Peer
	expiresAtMs     int64
	endpoint, model string
	partition       int32 // of its request.started
	offset          int64
	// started: the start is counted as a pending change (its account was known when read).
	started bool
	fin     *peerFinish
}

// peerFinish is how a request of the log was finished (here or by another admitter, as read).
type peerFinish struct {
	status, resolution string
	usage              [4]int64
	resp               api.FinishResponse // as this admitter settles it
}

func usageKey(u events.Units) [4]int64 {
	return [4]int64{u.VideoSeconds, u.TokensIn, u.TokensOut, u.ComputeMs}
}

// readBackSlack widens the start-up read-back of the events topic beyond the longest hold
// timeout, for events stamped by hosts whose clocks run behind this one's.
const readBackSlack = time.Minute

// newPeerLog is the peer follower's reader of the events topic (package follow). It reads
// the other admitters' request.started and request.finished events (applyPeer), so that N
// admitters see each other's holds within the topic's propagation delay instead of the
// ledger's fold delay, and keeps the started requests (peerOpen) so that any admitter can
// settle a finish. At start-up it reads back as far as a request can still be open (the price
// book's longest hold timeout plus readBackSlack, by offsets-for-times), and there its own
// earlier incarnation's events count as well; from the end offsets seen at start-up on, its
// own events (same source) are skipped.
//
// Its fetch MinBytes: with ADMITTER_INSTANCES>1 a fetch returns as soon as anything is new:
// admissions confirmed in log order wait for the follower, and peers' holds count as early as
// they can. With one instance nothing waits for it (it only sees another admitter that runs
// anyway, e.g. during a rolling deploy), and a fetch waits for follow.BatchBytesMin or
// follow.MaxWait: fetching every few records cost the broker and this process about a tenth
// of their CPU at 20,000 admits/s, for events it only skips.
func (s *Service) newPeerLog() *follow.Log {
	var holdMs int64
	for _, e := range s.book.Endpoints {
		holdMs = max(holdMs, e.HoldTimeoutMs)
	}
	minBytes := follow.BatchBytesMin
	if s.cfg.Instances > 1 {
		minBytes = 1
	}
	return follow.NewLog(s.followSource(), s.topics.Events, minBytes, ms(holdMs)+readBackSlack)
}

// applyPeer applies one event read by the peer follower. old: it was written before this
// admitter started (then its own earlier incarnation's events count too).
func (s *Service) applyPeer(msg kafka.Message, old bool) {
	if !old {
		for _, h := range msg.Headers {
			if h.Key == HeaderSource && string(h.Value) == s.source {
				return
			}
		}
	}
	// Unreadable input events are the ledger's to dead-letter; the admitter only skips them.
	ev, err := events.Decode(msg.Value)
	if err != nil || (!old && ev.Source == s.source) {
		return
	}
	part, off := int32(msg.Partition), msg.Offset
	switch p := ev.Payload.(type) {
	case events.RequestStarted:
		expMs := p.HoldExpiresAt.UnixMilli()
		if old && expMs <= time.Now().UnixMilli() {
			return // expired: the ledger releases it, nothing can finish it here
		}
		po := peerOpen{peer: decide.Peer{AccountID: p.AccountID, FundingAccountID: p.FundingAccountID, HoldMicros: p.HoldMicros, AllowanceMicros: p.AllowanceMicros,
			Funding: decide.ParseFunding(p.Funding), StartedMs: ev.Time.UnixMilli()}, expiresAtMs: expMs, endpoint: p.Endpoint,
			model: p.Model, partition: part, offset: off}
		s.mu.Lock()
		if _, dup := s.peers[p.RequestID]; !dup { // a start written twice counts once
			po.started = s.table.ApplyPeerStart(&po.peer, part, off)
			if len(s.peers) < s.cfg.LogOpenMax {
				s.peers[p.RequestID] = po
			} else {
				s.m.logIndexFull.Inc()
				if po.started { // nothing will finish it here: its budget reservation goes now
					s.table.ApplyPeerEnd(&po.peer)
				}
			}
		}
		s.mu.Unlock()
		s.m.peerEvents.Inc()
	case events.RequestFinished:
		s.mu.Lock()
		if po, ok := s.peers[p.RequestID]; ok {
			if po.fin == nil {
				s.settlePeerLocked(p.RequestID, &po, &p, part, off, ev.Time.UnixMilli())
			}
		} else if !old {
			s.finishedElsewhereLocked(&p, part, off, ev.Time.UnixMilli())
		}
		s.mu.Unlock()
		s.m.peerEvents.Inc()
	}
}

// settlePeerLocked records the durable finish f (at partition, offset, event time atMs) of log
// request id: its settlement as a pending change, and the answer for repeats.
func (s *Service) settlePeerLocked(id string, po *peerOpen, f *events.RequestFinished, part int32, off, atMs int64) {
	if !po.started { // its account was unknown when the start was read
		po.started = s.table.ApplyPeerStart(&po.peer, po.partition, po.offset)
	}
	q := s.table.QuotePeer(&po.peer, f.CostMicros, atMs)
	s.table.ApplyPeerFinish(&po.peer, f.CostMicros, part, off, atMs)
	po.fin = &peerFinish{status: f.Status, resolution: f.Usage.Resolution, usage: usageKey(f.Usage),
		resp: finishAnswer(id, &q, f.PriceBookVersion)}
	s.peers[id] = *po
	// Finished requests leave the index after ADMITTER_IDEMPOTENCY_MAX later ones.
	if len(s.peerDone) == s.cfg.IdempotencyMax {
		old := s.peerDone[s.peerDoneHead]
		if o, ok := s.peers[old]; ok && o.fin != nil {
			delete(s.peers, old)
		}
		s.peerDone[s.peerDoneHead] = id
		s.peerDoneHead = (s.peerDoneHead + 1) % len(s.peerDone)
		return
	}
	s.peerDone = append(s.peerDone, id)
}

// finishedElsewhereLocked handles another admitter's finish of a request this admitter
// admitted: the in-flight slots are freed, the settlement recorded, and (unless a finish of
// its own is being published) the answer kept for repeats.
func (s *Service) finishedElsewhereLocked(f *events.RequestFinished, part int32, off, atMs int64) {
	ri, ok := s.idem.Lookup(f.RequestID)
	if !ok {
		return
	}
	handle, open := s.idem.Open(ri)
	if !open {
		return
	}
	q, err := s.table.Quote(handle, f.CostMicros, atMs)
	if err != nil {
		return
	}
	// No latency sample: the finish reached another admitter, and this one reads it only
	// after the follower's lag, which is no measure of the endpoint.
	_ = s.table.Finish(handle, q, time.Now().UnixMilli(), decide.OutcomeNone, part, off)
	s.idem.Settle(ri)
	s.m.open.Set(float64(s.table.OpenRequests()))
	if s.idem.Fin(ri) != idem.FinNone { // this admitter's own finish is in flight: its answer stands
		return
	}
	body, _ := json.Marshal(finishAnswer(f.RequestID, &q, f.PriceBookVersion))
	s.idem.Finished(ri, &api.FinishRequest{RequestID: f.RequestID, Status: f.Status, Usage: f.Usage, DurationMs: f.DurationMs}, body)
}

// expirePeersLocked drops at most budget log requests whose hold expired.
func (s *Service) expirePeersLocked(nowMs int64, budget int) {
	for id, po := range s.peers {
		if budget--; budget < 0 {
			return
		}
		if po.expiresAtMs <= nowMs {
			if po.started && po.fin == nil { // its project's budget reservation ends with its hold
				s.table.ApplyPeerEnd(&po.peer)
			}
			delete(s.peers, id)
		}
	}
}
