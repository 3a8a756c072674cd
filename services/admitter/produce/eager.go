package produce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"

	"github.com/tallyhq/tally/shared/backoff"
	"github.com/tallyhq/tally/shared/tlsx"
)

// Fixed bounds of eagerProducer.
const (
	// eagerBatchBytesMax bounds the records of one partition in one produce request (Kafka's
	// default message.max.bytes), and the whole request.
	eagerBatchBytesMax = 1_000_000
	// eagerBatchRecordsMax bounds the records of one partition in one produce request.
	eagerBatchRecordsMax = 10_000
	// eagerRecordOverhead is added to each record's key, value and header bytes when sizing a
	// batch (record framing: length, attributes, deltas, header count, varints).
	eagerRecordOverhead = 32
	// eagerBackoffMin and eagerBackoffMax bound the wait between two attempts after a
	// retriable error (doubling), and between two metadata refreshes while they fail.
	eagerBackoffMin = 10 * time.Millisecond
	eagerBackoffMax = 500 * time.Millisecond
	// eagerMetadataCheck is how often the transport's cached metadata is checked for a
	// changed partition list or leaders (reading the cache costs no request).
	eagerMetadataCheck = time.Second
)

var errProducerClosed = errors.New("admitter: producer closed")

// eagerBackoff is the wait after failed requests in a row, and after failed metadata refreshes.
var eagerBackoff = backoff.Policy{Min: eagerBackoffMin, Max: eagerBackoffMax}

// eagerProducer is the Publisher over kafka-go's low-level API (a kafka.Transport, which
// routes each produce request to the partition leader). Each event is keyed by account and
// placed with kafka.Murmur2Balancer over the sorted partition list, exactly as every other
// Tally producer (kafka-go Writers with Murmur2Balancer) places it.
//
// One sender goroutine per leader broker waits for at least one pending record, takes what
// is pending for that broker's partitions (≤ 1,000,000 bytes and 10,000 records per
// partition, ≤ 1,000,000 bytes per request), sends one produce request with acks=all and no
// compression, and completes every record with its offset (base offset + index) or the
// error. ADMITTER_INFLIGHT_MAX requests may be in flight per broker (default 1, which keeps
// each partition's order); ADMITTER_LINGER_MS (default 1) lets the oldest record wait that long for more.
//
// At most ADMITTER_PRODUCE_BUFFER_MAX records are held (queued or in flight); beyond it
// Publish waits for room until its context ends. A record whose context ended before it was
// taken for a request is never sent; one in flight completes its caller with the context
// error and may still land (the producer is not idempotent; consumers dedupe by event id).
// Retriable errors (leader moved or unavailable, unknown topic or partition as after a
// topic re-creation, network errors, timeouts) refresh the metadata and retry the records
// still wanted, re-placed on the then-current partition list.
type eagerProducer struct {
	topic       string
	source      []byte
	addr        net.Addr
	tr          *kafka.Transport
	cl          *kafka.Client
	linger      time.Duration
	inflightMax int
	reqTimeout  time.Duration
	room        chan struct{} // one token per held record: ADMITTER_PRODUCE_BUFFER_MAX
	refreshCh   chan struct{} // wakes the metadata loop (capacity 1)
	ctx         context.Context
	cancel      context.CancelFunc
	wg          sync.WaitGroup

	mu       sync.Mutex
	parts    []int                  // sorted partition ids; empty = not known
	leaders  map[int]int32          // partition -> leader broker id
	queues   map[int][]*eagerRecord // partition -> records waiting for a request, in order
	unrouted []*eagerRecord         // records waiting for metadata
	senders  map[int32]*eagerSender
	closed   bool
}

// eagerRecord is one Publish call.
type eagerRecord struct {
	ctx        context.Context
	key, value []byte
	size       int
	at         time.Time        // when queued; only with a linger
	done       chan eagerResult // capacity 1: the producer never blocks on a caller
}

type eagerResult struct {
	partition int32
	offset    int64
	err       error
}

type eagerSender struct {
	id       int32
	wake     chan struct{} // capacity 1
	slot     chan struct{} // ADMITTER_INFLIGHT_MAX
	failures atomic.Int64  // failed requests in a row, 0 after a success
}

var _ Publisher = (*eagerProducer)(nil)

// newEagerProducer builds the events-topic producer over its own kafka.Transport (TLS from
// KAFKA_TLS_* when cfg.TLS is set): its own, so that refreshing its metadata (by dropping its
// connection pool) disturbs no other client.
func newEagerProducer(cfg Config) *eagerProducer {
	tr := tlsx.KafkaTransport(cfg.TLS)
	tr.MetadataTopics = []string{cfg.Topic} // metadata requests carry only the events topic
	addr := kafka.TCP(cfg.Brokers...)
	ctx, cancel := context.WithCancel(context.Background())
	p := &eagerProducer{
		topic: cfg.Topic, source: []byte(cfg.Source), addr: addr, tr: tr,
		cl:          &kafka.Client{Addr: addr, Transport: tr, Timeout: cfg.PublishTimeout},
		linger:      cfg.Linger,
		inflightMax: cfg.InflightMax,
		// The broker waits this long for the in-sync replicas; each record is also bounded by
		// its Publish context (ADMITTER_PUBLISH_TIMEOUT_MS).
		reqTimeout: cfg.PublishTimeout,
		room:       make(chan struct{}, cfg.BufferMax),
		refreshCh:  make(chan struct{}, 1),
		ctx:        ctx, cancel: cancel,
		leaders: map[int]int32{}, queues: map[int][]*eagerRecord{}, senders: map[int32]*eagerSender{},
	}
	p.wg.Add(1)
	go p.metadataLoop()
	p.requestRefresh()
	return p
}

// Publish makes one record durable (acks=all) and reports its partition and offset.
func (p *eagerProducer) Publish(ctx context.Context, key string, value []byte) (int32, int64, error) {
	select {
	case p.room <- struct{}{}:
	case <-ctx.Done():
		return -1, -1, fmt.Errorf("admitter: produce buffer full (%d records): %w", cap(p.room), ctx.Err())
	}
	r := &eagerRecord{ctx: ctx, key: []byte(key), value: value, done: make(chan eagerResult, 1),
		size: len(key) + len(value) + len(HeaderSource) + len(p.source) + eagerRecordOverhead}
	if p.linger > 0 {
		r.at = time.Now()
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.room
		return -1, -1, errProducerClosed
	}
	p.routeLocked([]*eagerRecord{r}, false)
	p.mu.Unlock()
	select {
	case res := <-r.done:
		return res.partition, res.offset, res.err
	case <-ctx.Done():
		// Queued: the sender drops it unsent. In flight: it may still land.
		return -1, -1, ctx.Err()
	}
}

// routeLocked places records on their partition's queue (at its front when retried, so that
// a partition's order is kept) and wakes the leaders' senders; without a partition list they
// wait for the metadata loop.
func (p *eagerProducer) routeLocked(rs []*eagerRecord, front bool) {
	if len(p.parts) == 0 {
		p.unrouted = append(p.unrouted, rs...)
		p.requestRefresh()
		return
	}
	if front {
		for i := len(rs) - 1; i >= 0; i-- {
			part := p.partitionOf(rs[i].key)
			p.queues[part] = slices.Insert(p.queues[part], 0, rs[i])
			p.wakeLocked(part)
		}
		return
	}
	for _, r := range rs {
		part := p.partitionOf(r.key)
		p.queues[part] = append(p.queues[part], r)
		p.wakeLocked(part)
	}
}

// partitionOf is kafka.Murmur2Balancer over the sorted partition list, as kafka-go's Writer
// (kafkax.NewWriter) places the same key.
func (p *eagerProducer) partitionOf(key []byte) int {
	return kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: key}, p.parts...)
}

func (p *eagerProducer) wakeLocked(part int) {
	id, ok := p.leaders[part]
	if !ok {
		return
	}
	s := p.senders[id]
	if s == nil {
		s = &eagerSender{id: id, wake: make(chan struct{}, 1), slot: make(chan struct{}, p.inflightMax)}
		p.senders[id] = s
		p.wg.Add(1)
		go p.send(s)
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (p *eagerProducer) requestRefresh() {
	select {
	case p.refreshCh <- struct{}{}:
	default:
	}
}

// complete hands a record its result and frees its buffer slot.
func (p *eagerProducer) complete(r *eagerRecord, res eagerResult) {
	r.done <- res
	<-p.room
}

func (p *eagerProducer) fail(rs []*eagerRecord, err error) {
	for _, r := range rs {
		p.complete(r, eagerResult{partition: -1, offset: -1, err: err})
	}
}

// send is a leader broker's sender: it waits for records, takes what is pending for the
// broker's partitions and sends it, ADMITTER_INFLIGHT_MAX requests at most in flight.
func (p *eagerProducer) send(s *eagerSender) {
	defer p.wg.Done()
	for {
		select {
		case <-s.wake:
		case <-p.ctx.Done():
			return
		}
		for {
			select {
			case s.slot <- struct{}{}:
			case <-p.ctx.Done():
				return
			}
			batches, wait := p.take(s.id)
			if wait > 0 { // ADMITTER_LINGER_MS: the oldest record may wait a little longer
				<-s.slot
				if !backoff.Sleep(p.ctx, wait) {
					return
				}
				continue
			}
			if len(batches) == 0 {
				<-s.slot
				break
			}
			if p.inflightMax > 1 {
				p.wg.Add(1)
				go func() { defer p.wg.Done(); p.produceOrBackOff(s, batches) }()
				continue
			}
			if !p.produceOrBackOff(s, batches) {
				return
			}
		}
	}
}

// produceOrBackOff sends one request and frees its slot; after a failed request it keeps the
// slot for a backoff (doubling from eagerBackoffMin to eagerBackoffMax), so that a broker
// that fails fast is not asked again at once. It reports whether the producer still runs.
func (p *eagerProducer) produceOrBackOff(s *eagerSender, batches []eagerBatch) bool {
	defer func() { <-s.slot }()
	if p.produce(batches) {
		s.failures.Store(0)
		return true
	}
	return backoff.Sleep(p.ctx, eagerBackoff.Wait(s.failures.Add(1)))
}

// eagerBatch is one partition's records in one produce request.
type eagerBatch struct {
	partition int
	records   []*eagerRecord
}

// take removes from the queues of the partitions led by broker id what one request carries;
// records whose context ended are completed with its error, unsent. With a linger it returns
// how much longer the oldest record may wait instead.
func (p *eagerProducer) take(id int32) ([]eagerBatch, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	mine := func(part int) bool { lid, ok := p.leaders[part]; return ok && lid == id }
	var oldest time.Time
	pending := 0
	for _, part := range p.parts {
		if !mine(part) {
			continue
		}
		q := p.pruneLocked(p.queues[part])
		p.queues[part] = q
		for _, r := range q {
			pending += r.size
			if oldest.IsZero() || r.at.Before(oldest) {
				oldest = r.at
			}
		}
	}
	if p.linger > 0 && pending > 0 && pending < eagerBatchBytesMax {
		if wait := p.linger - time.Since(oldest); wait > 0 {
			return nil, wait
		}
	}
	var out []eagerBatch
	total := 0
	for _, part := range p.parts {
		q := p.queues[part]
		if len(q) == 0 || !mine(part) {
			continue
		}
		n, size := 0, 0
		for n < len(q) && n < eagerBatchRecordsMax && size+q[n].size <= eagerBatchBytesMax-total {
			size += q[n].size
			n++
		}
		if n == 0 && total == 0 {
			n, size = 1, q[0].size // a record above the bound goes alone (the broker judges it)
		}
		if n == 0 {
			break // the request is full
		}
		out = append(out, eagerBatch{partition: part, records: slices.Clone(q[:n])})
		total += size
		clear(q[:n])
		if q = q[n:]; len(q) == 0 {
			q = nil
		}
		p.queues[part] = q
	}
	return out, 0
}

// produce sends one request and completes its records, or re-queues the ones still wanted
// after a retriable error. It reports whether the request succeeded.
func (p *eagerProducer) produce(batches []eagerBatch) bool {
	req := &produceapi.Request{Acks: int16(kafka.RequireAll), Timeout: int32(p.reqTimeout.Milliseconds()),
		Topics: []produceapi.RequestTopic{{Topic: p.topic, Partitions: make([]produceapi.RequestPartition, len(batches))}}}
	for i, b := range batches {
		// Attributes 0: no compression (every consumer reads it as is).
		req.Topics[0].Partitions[i] = produceapi.RequestPartition{Partition: int32(b.partition),
			RecordSet: protocol.RecordSet{Records: &eagerRecords{records: b.records, source: p.source}}}
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.reqTimeout+time.Second)
	m, err := p.tr.RoundTrip(ctx, p.addr, req)
	cancel()
	if err != nil {
		var ke kafka.Error
		if p.ctx.Err() != nil || (errors.As(err, &ke) && !ke.Temporary()) {
			for _, b := range batches {
				p.fail(b.records, fmt.Errorf("admitter: produce: %w", err))
			}
			return false
		}
		p.retry(batches)
		return false
	}
	res, _ := m.(*produceapi.Response)
	ok := true
	var again []eagerBatch
	for _, b := range batches {
		rp := findPartition(res, p.topic, b.partition)
		switch {
		case rp == nil:
			ok = false
			again = append(again, b)
		case rp.ErrorCode != 0:
			ok = false
			if ke := kafka.Error(rp.ErrorCode); ke.Temporary() {
				again = append(again, b)
			} else {
				p.fail(b.records, fmt.Errorf("admitter: produce to partition %d: %w", b.partition, ke))
			}
		case rp.BaseOffset < 0:
			p.fail(b.records, errors.New("admitter: write acknowledged without a position"))
		default:
			for i, r := range b.records {
				p.complete(r, eagerResult{partition: int32(b.partition), offset: rp.BaseOffset + int64(i)})
			}
		}
	}
	if len(again) > 0 {
		p.retry(again)
	}
	return ok
}

func findPartition(res *produceapi.Response, topic string, part int) *produceapi.ResponsePartition {
	if res == nil {
		return nil
	}
	for i := range res.Topics {
		if res.Topics[i].Topic != topic {
			continue
		}
		for j := range res.Topics[i].Partitions {
			if rp := &res.Topics[i].Partitions[j]; int(rp.Partition) == part {
				return rp
			}
		}
	}
	return nil
}

// retry asks for fresh metadata and puts the records still wanted back at the front of
// their (re-computed) partition's queue; the others complete with their context's error.
func (p *eagerProducer) retry(batches []eagerBatch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var live []*eagerRecord
	for _, b := range batches {
		for _, r := range b.records {
			if err := r.ctx.Err(); err != nil || p.closed {
				if err == nil {
					err = errProducerClosed
				}
				p.complete(r, eagerResult{partition: -1, offset: -1, err: err})
				continue
			}
			live = append(live, r)
		}
	}
	p.requestRefresh()
	if len(live) > 0 {
		p.routeLocked(live, true)
	}
}

// eagerRecords reads a batch's records into a produce request, each with the HeaderSource
// header (the peer follower skips its own admitter's events by it). Like kafka-go's Writer,
// it reuses one Record: the encoder consumes each before it reads the next.
type eagerRecords struct {
	records    []*eagerRecord
	source     []byte
	i          int
	rec        protocol.Record
	hdr        [1]protocol.Header
	key, value bytesReader
}

func (rr *eagerRecords) ReadRecord() (*protocol.Record, error) {
	if rr.i >= len(rr.records) {
		return nil, io.EOF
	}
	r := rr.records[rr.i]
	rr.i++
	rr.key.reset(r.key)
	rr.value.reset(r.value)
	rr.hdr[0] = protocol.Header{Key: HeaderSource, Value: rr.source}
	// Time zero: the batch's encoding stamps the time of sending.
	rr.rec = protocol.Record{Key: &rr.key, Value: &rr.value, Headers: rr.hdr[:]}
	return &rr.rec, nil
}

// bytesReader is a reusable protocol.Bytes over a byte slice.
type bytesReader struct {
	b   []byte
	off int
}

func (b *bytesReader) reset(p []byte) { b.b, b.off = p, 0 }
func (b *bytesReader) Len() int       { return len(b.b) - b.off }
func (b *bytesReader) Close() error   { return nil }

// WriteTo lets io.Copy (the record encoder) write the bytes without a copy buffer.
func (b *bytesReader) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(b.b[b.off:])
	b.off += n
	return int64(n), err
}

func (b *bytesReader) Read(p []byte) (int, error) {
	if b.off >= len(b.b) {
		return 0, io.EOF
	}
	n := copy(p, b.b[b.off:])
	b.off += n
	return n, nil
}

// metadataLoop fetches the events topic's partitions and leaders anew when asked (at start,
// after a retriable error, while records wait for a partition list), at most every
// eagerBackoffMin and backing off to eagerBackoffMax while it fails. Every
// eagerMetadataCheck it also applies the transport's cached metadata (refreshed in the
// background every few seconds), so that added partitions or a re-created topic are seen
// without an error, as kafka-go's Writer sees them.
func (p *eagerProducer) metadataLoop() {
	defer p.wg.Done()
	tick := time.NewTicker(eagerMetadataCheck)
	defer tick.Stop()
	first := true
	var last time.Time
	for {
		select {
		case <-p.refreshCh:
		case <-tick.C:
			_ = p.refresh() // errors are seen, and retried, by the senders
			continue
		case <-p.ctx.Done():
			return
		}
		for failures := int64(1); ; failures++ {
			if !backoff.Sleep(p.ctx, time.Until(last.Add(eagerBackoffMin))) {
				return
			}
			if !first {
				// The transport serves metadata from a cache refreshed every few seconds:
				// dropping its connection pool makes the next request fetch it anew.
				p.tr.CloseIdleConnections()
			}
			first, last = false, time.Now()
			err := p.refresh()
			if err == nil {
				break
			}
			p.pruneUnrouted()
			if !backoff.Sleep(p.ctx, eagerBackoff.Wait(failures)) {
				return
			}
		}
	}
}

// refresh reads the partition list and leaders, re-places the queued records when the list
// changed, and wakes the senders. A partition without a leader is an error (retried).
func (p *eagerProducer) refresh() error {
	ctx, cancel := context.WithTimeout(p.ctx, p.reqTimeout+time.Second)
	md, err := p.cl.Metadata(ctx, &kafka.MetadataRequest{Addr: p.addr, Topics: []string{p.topic}})
	cancel()
	if err != nil {
		return fmt.Errorf("admitter: metadata: %w", err)
	}
	var parts []int
	leaders := map[int]int32{}
	var missing error
	for _, t := range md.Topics {
		if t.Name != p.topic {
			continue
		}
		if t.Error != nil {
			return fmt.Errorf("admitter: metadata %s: %w", p.topic, t.Error)
		}
		for _, pt := range t.Partitions {
			parts = append(parts, pt.ID)
			if pt.Error == nil && pt.Leader.ID >= 0 {
				leaders[pt.ID] = int32(pt.Leader.ID)
			} else {
				missing = fmt.Errorf("admitter: metadata %s/%d: no leader (%v)", p.topic, pt.ID, pt.Error)
			}
		}
	}
	if len(parts) == 0 {
		return fmt.Errorf("admitter: metadata %s: no partitions", p.topic)
	}
	slices.Sort(parts)
	p.mu.Lock()
	defer p.mu.Unlock()
	if !slices.Equal(parts, p.parts) {
		// Another partition count places keys elsewhere: re-place everything queued, keeping
		// each old partition's order.
		var all []*eagerRecord
		for _, part := range p.parts {
			all = append(all, p.queues[part]...)
		}
		all = append(all, p.unrouted...)
		p.queues, p.unrouted = map[int][]*eagerRecord{}, nil
		p.parts, p.leaders = parts, leaders
		p.routeLocked(all, false)
	} else {
		p.leaders = leaders
		rs := p.unrouted
		p.unrouted = nil
		p.routeLocked(rs, false)
	}
	for part, q := range p.queues {
		if len(q) > 0 {
			p.wakeLocked(part)
		}
	}
	return missing
}

// pruneUnrouted completes the records whose context ended among those no sender takes: the
// ones waiting for metadata and the ones queued on a partition without a known leader.
func (p *eagerProducer) pruneUnrouted() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unrouted = p.pruneLocked(p.unrouted)
	for part, q := range p.queues {
		if _, ok := p.leaders[part]; !ok {
			p.queues[part] = p.pruneLocked(q)
		}
	}
}

// pruneLocked completes the records of rs whose context ended and returns the others.
func (p *eagerProducer) pruneLocked(rs []*eagerRecord) []*eagerRecord {
	live := rs[:0]
	for _, r := range rs {
		if err := r.ctx.Err(); err != nil {
			p.complete(r, eagerResult{partition: -1, offset: -1, err: err})
			continue
		}
		live = append(live, r)
	}
	clear(rs[len(live):])
	return live
}

// close waits (bounded by ctx) until every held record is completed, then stops the
// senders, fails what is left and closes the connections.
func (p *eagerProducer) close(ctx context.Context) {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	for len(p.room) > 0 && backoff.Sleep(ctx, 5*time.Millisecond) {
		p.pruneUnrouted()
	}
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	for part, q := range p.queues {
		p.fail(q, errProducerClosed)
		delete(p.queues, part)
	}
	p.fail(p.unrouted, errProducerClosed)
	p.unrouted = nil
	p.mu.Unlock()
	p.tr.CloseIdleConnections()
}
