// Package detect is the abuse detector: on an interval it runs each rule as a ClickHouse query
// over the rollups and publishes every finding as an abuse.flagged event on the events topic.
// A flag's id (and its event id and time) are functions of rule, account, key and window, so
// running twice over the same window publishes the same event, which every consumer folds
// once; flags already stored in usage_events are not published again.
package detect

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
)

// Source is the CloudEvents source of the detector's events.
const Source = "tally-sink/detector"

// Publisher publishes events durably (acks=all), keyed by account id.
type Publisher interface {
	Publish(ctx context.Context, evs []events.Event) error
}

// Stats are the detector's counters.
type Stats struct {
	Runs, Flags, Errors atomic.Int64
}

// Detector runs the rules.
type Detector struct {
	cfg   Config
	conn  clickhouse.Conn
	pub   Publisher
	log   *slog.Logger
	Stats Stats
}

// New validates cfg.
func New(cfg Config, conn clickhouse.Conn, pub Publisher, log *slog.Logger) (*Detector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &Detector{cfg: cfg, conn: conn, pub: pub, log: log}, nil
}

// Run calls RunOnce every interval until ctx ends. A failed run is logged and counted; the
// next one tries again.
func (d *Detector) Run(ctx context.Context) error {
	t := time.NewTicker(d.cfg.Interval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			if _, err := d.RunOnce(ctx, now); err != nil && ctx.Err() == nil {
				d.Stats.Errors.Add(1)
				d.log.Error("detector run failed", "error", err)
			}
		}
	}
}

type rule struct {
	name   string
	sql    string
	window time.Duration
	params map[string]string
}

func (d *Detector) rules() []rule {
	c := d.cfg
	w := time.Duration(c.WindowMinutes) * time.Minute
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	i := strconv.Itoa
	return []rule{
		{RuleBurst, burstSQL, w, map[string]string{"k": f(c.BurstFactor), "floor": i(c.BurstFloorPerMinute)}},
		{RuleKeySharing, keySharingSQL, time.Hour, map[string]string{"max": i(c.KeyClientsMax)}},
		{RuleCostAnomaly, costAnomalySQL, w, map[string]string{"zmax": f(c.CostZScoreMax), "wmin": i(c.CostWindowMin), "hmin": i(c.CostHistoryMin)}},
		{RuleRejectionStorm, rejectionStormSQL, w, map[string]string{"share": f(float64(c.RejectSharePermille) / 1000),
			"amin": i(c.RejectAttemptsMin), "mmin": i(c.RejectMinutesMin)}},
		{RuleExpiryAbuse, expiryAbuseSQL, time.Hour, map[string]string{"emin": i(c.ExpiredMin), "eshare": i(c.ExpiredSharePermille), "lmin": i(c.LateFinishMin)}},
	}
}

// Window returns the last complete window of length w before now, aligned to the Unix epoch.
func Window(now time.Time, w time.Duration) (start, end time.Time) {
	end = now.UTC().Truncate(w)
	return end.Add(-w), end
}

// FlagID is the deterministic id of a finding.
func FlagID(rule, account, key string, windowStart time.Time) string {
	return events.DerivedID(fmt.Sprintf("abuse/%s/%s/%s/%d", rule, account, key, windowStart.Unix()), "flag")
}

// RunOnce evaluates every rule over its last complete window before now, publishes the
// findings not yet stored, and returns all findings. Rules run in order; a failing rule does
// not stop the others (the errors are joined).
func (d *Detector) RunOnce(ctx context.Context, now time.Time) ([]events.AbuseFlagged, error) {
	d.Stats.Runs.Add(1)
	var all []events.AbuseFlagged
	var errs []error
	for _, r := range d.rules() {
		flags, err := d.evaluate(ctx, r, now)
		if err != nil {
			errs = append(errs, fmt.Errorf("detect: rule %s: %w", r.name, err))
			continue
		}
		all = append(all, flags...)
	}
	if err := d.publishNew(ctx, all); err != nil {
		errs = append(errs, err)
	}
	return all, errors.Join(errs...)
}

// Evaluate runs one rule by name over its window before now without publishing.
func (d *Detector) Evaluate(ctx context.Context, name string, now time.Time) ([]events.AbuseFlagged, error) {
	for _, r := range d.rules() {
		if r.name == name {
			return d.evaluate(ctx, r, now)
		}
	}
	return nil, fmt.Errorf("detect: unknown rule %q", name)
}

func (d *Detector) evaluate(ctx context.Context, r rule, now time.Time) ([]events.AbuseFlagged, error) {
	ws, we := Window(now, r.window)
	hs := ws.AddDate(0, 0, -d.cfg.HistoryDays)
	p := clickhouse.Parameters{"ws": chTime(ws), "we": chTime(we), "hs": chTime(hs), "n": strconv.Itoa(d.cfg.FlagsMax)}
	for k, v := range r.params {
		p[k] = v
	}
	rs, err := d.conn.Query(clickhouse.Context(ctx, clickhouse.WithParameters(p)), r.sql)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []events.AbuseFlagged
	for rs.Next() {
		var (
			account, key string
			score        float64
			evidence     map[string]string
		)
		if err := rs.Scan(&account, &key, &score, &evidence); err != nil {
			return nil, err
		}
		if score != score || score < 0 {
			score = 0
		}
		f := events.AbuseFlagged{FlagID: FlagID(r.name, account, key, ws), AccountID: account, KeyID: key, Rule: r.name,
			Score: min(score, 1e12), Action: events.ActionThrottle, WindowStart: ws, WindowEnd: we, Evidence: evidence}
		if err := f.Validate(); err != nil {
			d.log.Warn("detector: skipping invalid finding", "rule", r.name, "account", account, "error", err)
			continue
		}
		out = append(out, f)
	}
	return out, rs.Err()
}

func chTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") }

// publishNew publishes the findings whose flag id is not yet in usage_events.
func (d *Detector) publishNew(ctx context.Context, flags []events.AbuseFlagged) error {
	if len(flags) == 0 {
		return nil
	}
	from := flags[0].WindowEnd
	for _, f := range flags {
		if f.WindowEnd.Before(from) {
			from = f.WindowEnd
		}
	}
	seen := map[string]bool{}
	rs, err := d.conn.Query(clickhouse.Context(ctx, clickhouse.WithParameters(clickhouse.Parameters{"from": chTime(from)})),
		"SELECT attrs['flag_id'] FROM usage_events WHERE type = 'tally.abuse.flagged.v1' AND time >= {from:DateTime}")
	if err != nil {
		return fmt.Errorf("detect: read stored flags: %w", err)
	}
	for rs.Next() {
		var id string
		if err := rs.Scan(&id); err != nil {
			rs.Close()
			return fmt.Errorf("detect: read stored flags: %w", err)
		}
		seen[id] = true
	}
	rs.Close()
	var evs []events.Event
	for _, f := range flags {
		if seen[f.FlagID] {
			continue
		}
		ev, err := events.NewWithID(events.DerivedID(f.FlagID, "abuse.flagged"), Source, f.WindowEnd, f)
		if err != nil {
			return fmt.Errorf("detect: build flag %s: %w", f.FlagID, err)
		}
		evs = append(evs, ev)
	}
	if len(evs) == 0 {
		return nil
	}
	if err := d.pub.Publish(ctx, evs); err != nil {
		return fmt.Errorf("detect: publish %d flags: %w", len(evs), err)
	}
	d.Stats.Flags.Add(int64(len(evs)))
	for _, ev := range evs {
		f := ev.Payload.(events.AbuseFlagged)
		d.log.Info("abuse flagged", "rule", f.Rule, "account", f.AccountID, "key", f.KeyID, "score", f.Score, "window_start", f.WindowStart)
	}
	return nil
}

// KafkaPublisher publishes to one topic with acks=all, keyed by the event's subject.
type KafkaPublisher struct{ w *kafka.Writer }

var _ Publisher = (*KafkaPublisher)(nil)

// NewKafkaPublisher returns a plaintext publisher to topic.
func NewKafkaPublisher(brokers []string, topic string) *KafkaPublisher {
	return NewKafkaPublisherTLS(brokers, nil, topic)
}

// NewKafkaPublisherTLS returns a publisher to topic over tc (KAFKA_TLS_*; nil = plaintext).
func NewKafkaPublisherTLS(brokers []string, tc *tls.Config, topic string) *KafkaPublisher {
	wc := kafkax.DefaultWriterConfig
	wc.TLS = tc
	return &KafkaPublisher{w: kafkax.NewWriter(brokers, topic, wc)}
}

// Publish writes evs and returns once every one is acknowledged by all in-sync replicas.
func (p *KafkaPublisher) Publish(ctx context.Context, evs []events.Event) error {
	msgs := make([]kafka.Message, len(evs))
	for i, ev := range evs {
		b, err := ev.Encode()
		if err != nil {
			return err
		}
		msgs[i] = kafka.Message{Key: []byte(ev.Subject), Value: b}
	}
	return p.w.WriteMessages(ctx, msgs...)
}

// Close flushes and closes the writer.
func (p *KafkaPublisher) Close() error { return p.w.Close() }
