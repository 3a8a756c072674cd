package sink_test

import (
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/services/sink/pipeline"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestSinkStoresFundedRequests: request events of projects funded by an organization, keyed
// by the organization in Kafka (their subject), go through the sink's pipeline into
// ClickHouse as the projects' requests with the organization as funding_account_id: two
// projects that use the same request id stay two requests, an expiry (journal topic) joins
// its request, and the organization's budget.changed lands with its budget in attrs.
func TestSinkStoresFundedRequests(t *testing.T) {
	c := kafkatest.Start(t)
	ch := chtest.Config(t)
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	var msgs []kafka.Message
	add := func(topic string, sec int, d events.Data) {
		ev, err := events.New("test", at.Add(time.Duration(sec)*time.Second), d)
		ev = testevents.Must(t, ev, err)
		m := testevents.Message(t, topic, ev)
		if string(m.Key) != ev.Subject {
			t.Fatalf("key %q, subject %q", m.Key, ev.Subject)
		}
		msgs = append(msgs, m)
	}
	begin := func(acct, id string, sec int) {
		add(c.Topics.Events, sec, events.RequestStarted{RequestID: id, AccountID: acct, FundingAccountID: "org", Endpoint: "video",
			Tier: "pro", Priority: events.PriorityStandard, Funding: events.FundingCredits, EstimateMicros: 900, HoldMicros: 900,
			HoldExpiresAt: at.Add(time.Hour), PriceBookVersion: "2026-01"})
	}
	begin("p1", "r1", 0)
	begin("p2", "r1", 1)
	begin("p2", "r2", 2)
	add(c.Topics.Events, 3, events.RequestFinished{RequestID: "r1", AccountID: "p1", FundingAccountID: "org", Endpoint: "video",
		Status: events.StatusSucceeded, CostMicros: 800, CreditsMicros: 800, PriceBookVersion: "2026-01"})
	add(c.Topics.Events, 4, events.RequestFinished{RequestID: "r1", AccountID: "p2", FundingAccountID: "org", Endpoint: "video",
		Status: events.StatusSucceeded, CostMicros: 650, CreditsMicros: 650, PriceBookVersion: "2026-01"})
	add(c.Topics.Journal, 5, events.RequestExpired{RequestID: "r2", AccountID: "p2", FundingAccountID: "org", Endpoint: "video",
		Funding: events.FundingCredits, HoldMicros: 900, ReleasedMicros: 900, StartedEventID: events.DerivedID("s", "r2"), ExpiredAt: at.Add(5 * time.Second)})
	add(c.Topics.Events, 6, events.BudgetChanged{AccountID: "org", ProjectID: "p1", BudgetMicros: 5_000_000, AdminKeyID: "ops"})
	add(c.Topics.Events, 7, events.BudgetChanged{AccountID: "org", ProjectID: "p2", Remove: true})
	testevents.Produce(t, c.Brokers, msgs)
	start(t, testConfig(c, ch), pipeline.Hooks{})

	conn := openCH(t, ch)
	waitCount(t, conn, "SELECT count() FROM usage_events", uint64(len(msgs)))
	rs, err := conn.Query(t.Context(), `SELECT concatWithSeparator('|', account_id, request_id, funding_account_id, outcome, toString(cost_micros))
FROM requests_v ORDER BY account_id, request_id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rs.Next() {
		var line string
		if err := rs.Scan(&line); err != nil {
			t.Fatal(err)
		}
		got = append(got, line)
	}
	rs.Close()
	if want := "p1|r1|org|succeeded|800;p2|r1|org|succeeded|650;p2|r2|org|expired|0"; strings.Join(got, ";") != want {
		t.Fatalf("requests_v: %q, want %q", got, want)
	}
	var budgets string
	if err := conn.QueryRow(t.Context(), `SELECT arrayStringConcat(groupArray(concat(account_id, ':', attrs['project_id'], '=',
  attrs['budget_micros'], attrs['remove'])), ';') FROM (SELECT * FROM usage_events FINAL WHERE type = 'tally.budget.changed.v1' ORDER BY time)`).Scan(&budgets); err != nil ||
		budgets != "org:p1=5000000;org:p2=0true" {
		t.Fatalf("budget.changed rows: %q (%v), want org:p1=5000000;org:p2=0true", budgets, err)
	}
}
