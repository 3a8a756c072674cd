package detect_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/detect"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// now puts the 5-minute window at [12:00, 12:05) and the hour window at [11:00, 12:00).
var now = time.Date(2026, 3, 20, 12, 7, 0, 0, time.UTC)

func testConfig() detect.Config {
	c := detect.DefaultConfig()
	c.BurstFactor, c.BurstFloorPerMinute = 5, 10
	return c
}

func newSeeder(t *testing.T) (*testevents.Seeder, clickhouse.Conn) {
	_, conn := chtest.Open(t)
	return &testevents.Seeder{TB: t, Store: chstore.NewStore(conn, time.Minute), Topic: "seed"}, conn
}

func flagged(t *testing.T, conn clickhouse.Conn, rule string) []events.AbuseFlagged {
	t.Helper()
	d, err := detect.New(testConfig(), conn, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := d.Evaluate(context.Background(), rule, now)
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

func accounts(fs []events.AbuseFlagged) string {
	var out []string
	for _, f := range fs {
		out = append(out, f.AccountID)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func TestBurst(t *testing.T) {
	s, conn := newSeeder(t)
	n := 0
	req := func(acct string, at time.Time, count int) {
		for i := 0; i < count; i++ {
			n++
			s.Request(acct, fmt.Sprintf("r%d", n), "chat", "pro", events.FundingCredits, at.Add(time.Duration(i)*time.Millisecond), 10, -1, "")
		}
	}
	for m := 0; m < 60; m++ {
		hist := now.AddDate(0, 0, -2).Add(time.Duration(m) * time.Minute)
		req("acct-burst", hist, 4)   // p99 4/min, floored to 10: flagged above 50
		req("acct-steady", hist, 20) // p99 20/min: flagged above 100
	}
	s.Flush()
	win := time.Date(2026, 3, 20, 12, 2, 0, 0, time.UTC)
	req("acct-burst", win, 80)
	req("acct-steady", win, 30)
	req("acct-new", win, 40)                      // no history: floor 10, flagged above 50
	req("acct-burst", now.Add(-time.Minute), 500) // after the window (incomplete): the next run's business
	s.Flush()
	fs := flagged(t, conn, detect.RuleBurst)
	if accounts(fs) != "acct-burst" {
		t.Fatalf("flagged %q, want acct-burst only: %+v", accounts(fs), fs)
	}
	f := fs[0]
	if f.Score != 8 || f.Evidence["peak_per_minute"] != "80" || f.Evidence["history_p99_per_minute"] != "4" {
		t.Fatalf("finding %+v", f)
	}
	if !f.WindowStart.Equal(time.Date(2026, 3, 20, 12, 0, 0, 0, time.UTC)) || !f.WindowEnd.Equal(f.WindowStart.Add(5*time.Minute)) {
		t.Fatalf("window %s..%s", f.WindowStart, f.WindowEnd)
	}
	if f.FlagID != detect.FlagID(detect.RuleBurst, "acct-burst", "", f.WindowStart) || f.Action != events.ActionThrottle {
		t.Fatalf("flag id/action %+v", f)
	}
}

func TestKeySharing(t *testing.T) {
	s, conn := newSeeder(t)
	at := time.Date(2026, 3, 20, 11, 30, 0, 0, time.UTC)
	for i := 0; i < 25; i++ {
		s.Request("acct-share", fmt.Sprintf("s%d", i), "chat", "pro", events.FundingCredits, at, 10, 10, fmt.Sprintf("10.0.%d.1", i))
	}
	for i := 0; i < 50; i++ {
		s.Request("acct-ok", fmt.Sprintf("o%d", i), "chat", "pro", events.FundingCredits, at, 10, 10, fmt.Sprintf("10.1.%d.1", i%5))
	}
	for i := 0; i < 30; i++ { // many clients, but in the current (incomplete) hour
		s.Request("acct-later", fmt.Sprintf("l%d", i), "chat", "pro", events.FundingCredits, now, 10, 10, fmt.Sprintf("10.2.%d.1", i))
	}
	s.Flush()
	fs := flagged(t, conn, detect.RuleKeySharing)
	if accounts(fs) != "acct-share" {
		t.Fatalf("flagged %q: %+v", accounts(fs), fs)
	}
	if fs[0].KeyID != "key-acct-share" || fs[0].Evidence["distinct_clients"] != "25" || fs[0].Score != 1.25 {
		t.Fatalf("finding %+v", fs[0])
	}
}

func TestCostAnomaly(t *testing.T) {
	s, conn := newSeeder(t)
	hist := now.AddDate(0, 0, -1)
	for i := 0; i < 40; i++ {
		cost := int64(900 + 200*(i%2)) // mean 1000, standard deviation 100
		s.Request("acct-cost", fmt.Sprintf("h%d", i), "video", "pro", events.FundingCredits, hist.Add(time.Duration(i)*time.Minute), cost, 10, "")
		s.Request("acct-normal", fmt.Sprintf("n%d", i), "video", "pro", events.FundingCredits, hist.Add(time.Duration(i)*time.Minute), cost, 10, "")
		if i < 10 {
			s.Request("acct-young", fmt.Sprintf("y%d", i), "video", "pro", events.FundingCredits, hist, 1000, 10, "")
		}
	}
	win := time.Date(2026, 3, 20, 12, 1, 0, 0, time.UTC)
	for i := 0; i < 6; i++ {
		s.Request("acct-cost", fmt.Sprintf("w%d", i), "video", "pro", events.FundingCredits, win, 5000, 10, "")
		s.Request("acct-normal", fmt.Sprintf("x%d", i), "video", "pro", events.FundingCredits, win, 1050, 10, "")
		s.Request("acct-young", fmt.Sprintf("z%d", i), "video", "pro", events.FundingCredits, win, 9000, 10, "") // too little history
	}
	s.Flush()
	fs := flagged(t, conn, detect.RuleCostAnomaly)
	if accounts(fs) != "acct-cost" {
		t.Fatalf("flagged %q: %+v", accounts(fs), fs)
	}
	if fs[0].Score != 40 || fs[0].Evidence["mean_micros_window"] != "5000" || fs[0].Evidence["std_micros_history"] != "100" {
		t.Fatalf("finding %+v", fs[0])
	}
}

func TestRejectionStorm(t *testing.T) {
	s, conn := newSeeder(t)
	n := 0
	for m := 0; m < 5; m++ {
		at := time.Date(2026, 3, 20, 12, m, 0, 0, time.UTC)
		for i := 0; i < 20; i++ {
			n++
			id := fmt.Sprintf("q%d", n)
			if i < 2 {
				s.Request("acct-storm", id, "chat", "pro", events.FundingCredits, at, 10, -1, "")
			} else {
				s.Reject("acct-storm", id, "chat", "rate_limited", at, "")
			}
			if i%2 == 0 {
				s.Request("acct-mixed", id, "chat", "pro", events.FundingCredits, at, 10, -1, "")
			} else {
				s.Reject("acct-mixed", id, "chat", "rate_limited", at, "")
			}
			if m < 2 { // storm but only two minutes long
				s.Reject("acct-blip", id, "chat", "rate_limited", at, "")
			}
		}
	}
	s.Flush()
	fs := flagged(t, conn, detect.RuleRejectionStorm)
	if accounts(fs) != "acct-storm" {
		t.Fatalf("flagged %q: %+v", accounts(fs), fs)
	}
	if fs[0].Score != 0.9 || fs[0].Evidence["minutes"] != "5" || fs[0].Evidence["rejected"] != "90" {
		t.Fatalf("finding %+v", fs[0])
	}
}

func TestExpiryAbuse(t *testing.T) {
	s, conn := newSeeder(t)
	at := time.Date(2026, 3, 20, 11, 10, 0, 0, time.UTC)
	expire := func(acct, id string, when time.Time) {
		s.Add(events.RequestExpired{RequestID: id, AccountID: acct, Endpoint: "video", Funding: events.FundingCredits,
			HoldMicros: 10, ReleasedMicros: 10, StartedEventID: events.DerivedID(id, "s"), ExpiredAt: when}, when)
	}
	for i := 0; i < 12; i++ {
		id := fmt.Sprintf("e%d", i)
		s.Request("acct-exp", id, "video", "pro", events.FundingCredits, at, 10, -1, "")
		expire("acct-exp", id, at.Add(2*time.Minute))
		fid := fmt.Sprintf("f%d", i)
		s.Request("acct-fine", fid, "video", "pro", events.FundingCredits, at, 10, -1, "")
		if i == 0 {
			expire("acct-fine", fid, at.Add(2*time.Minute))
		}
	}
	for i := 0; i < 6; i++ { // expired, then finished anyway: late finishes
		id := fmt.Sprintf("l%d", i)
		s.Request("acct-late", id, "video", "pro", events.FundingCredits, at, 10, -1, "")
		expire("acct-late", id, at.Add(time.Minute))
		s.Add(events.RequestFinished{RequestID: id, AccountID: "acct-late", Endpoint: "video", Status: events.StatusSucceeded,
			CostMicros: 10, DurationMs: 600000, PriceBookVersion: "v"}, at.Add(10*time.Minute))
	}
	for i := 0; i < 20; i++ { // plenty of starts: 6/26 expired is below the share
		s.Request("acct-late", fmt.Sprintf("ok%d", i), "video", "pro", events.FundingCredits, at, 10, 10, "")
	}
	s.Flush()
	fs := flagged(t, conn, detect.RuleExpiryAbuse)
	if accounts(fs) != "acct-exp,acct-late" {
		t.Fatalf("flagged %q: %+v", accounts(fs), fs)
	}
	for _, f := range fs {
		if f.AccountID == "acct-late" && f.Evidence["late_finishes"] != "6" {
			t.Fatalf("late finishes: %+v", f)
		}
		if f.AccountID == "acct-exp" && (f.Evidence["expired"] != "12" || f.Score != 1) {
			t.Fatalf("expired: %+v", f)
		}
	}
	// The late-finish requests show up in requests_v too.
	if n := chtest.Count(t, conn, "SELECT count() FROM requests_v WHERE late_finish"); n != 6 {
		t.Fatalf("requests_v late finishes: %d", n)
	}
}

func TestRunOncePublishesIdempotentFlags(t *testing.T) {
	c := kafkatest.Start(t)
	s, conn := newSeeder(t)
	win := time.Date(2026, 3, 20, 12, 2, 0, 0, time.UTC)
	for i := 0; i < 80; i++ {
		s.Request("acct-burst", fmt.Sprintf("b%d", i), "chat", "pro", events.FundingCredits, win, 10, -1, "")
	}
	s.Flush()
	pub := detect.NewKafkaPublisher(c.Brokers, c.Topics.Events)
	defer pub.Close()
	d, err := detect.New(testConfig(), conn, pub, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	first, err := d.RunOnce(ctx, now)
	if err != nil || len(first) != 1 {
		t.Fatalf("first run: %v %+v", err, first)
	}
	// A second run in the same window (no sink has stored the flag yet) re-publishes the very
	// same event: same event id, same flag id, same time.
	if _, err := d.RunOnce(ctx, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: c.Brokers, GroupID: c.Group("check"), Topic: c.Topics.Events, StartOffset: kafka.FirstOffset, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var got []events.Event
	for len(got) < 2 {
		m, err := r.ReadMessage(rctx)
		if err != nil {
			t.Fatalf("read flags: %v", err)
		}
		ev, err := events.Decode(m.Value)
		if err != nil {
			t.Fatalf("published an undecodable flag: %v", err)
		}
		if string(m.Key) != "acct-burst" {
			t.Fatalf("key %q", m.Key)
		}
		got = append(got, ev)
	}
	a, b := got[0], got[1]
	if a.ID != b.ID || !a.Time.Equal(b.Time) || a.Payload.(events.AbuseFlagged).FlagID != first[0].FlagID {
		t.Fatalf("re-published flag differs: %+v vs %+v", a, b)
	}
	// Once the sink has stored the flag, the detector does not publish it again.
	seedFlag := &testevents.Seeder{TB: t, Store: chstore.NewStore(conn, time.Minute), Topic: "flags"}
	seedFlag.Add(a.Payload, a.Time)
	seedFlag.Flush()
	before := d.Stats.Flags.Load()
	if _, err := d.RunOnce(ctx, now); err != nil {
		t.Fatal(err)
	}
	if d.Stats.Flags.Load() != before {
		t.Fatal("a stored flag was published again")
	}
}
