package ledger_test

import (
	"sync"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// fetchGate holds the ledger's fetches of one topic in the kfake broker while it is closed,
// so that the test decides what the ledger has folded when an API route reads its view.
type fetchGate struct {
	c     *kafkatest.Cluster
	topic string

	mu     sync.Mutex
	open   chan struct{} // closed: fetches pass
	held   map[int32]bool
	heldCh chan struct{} // signalled on each newly held fetch
}

func newFetchGate(c *kafkatest.Cluster, topic string) *fetchGate {
	g := &fetchGate{c: c, topic: topic, open: make(chan struct{}), heldCh: make(chan struct{}, 64)}
	close(g.open)
	c.Fake.ControlKey(int16(kmsg.Fetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.Fake.KeepControl()
		g.mu.Lock()
		open := g.open
		g.mu.Unlock()
		select {
		case <-open:
			return nil, nil, false
		default:
		}
		parts := g.partitions(req.(*kmsg.FetchRequest))
		if len(parts) == 0 {
			return nil, nil, false
		}
		g.mu.Lock()
		for _, p := range parts {
			g.held[p] = true
		}
		g.mu.Unlock()
		select {
		case g.heldCh <- struct{}{}:
		default:
		}
		c.Fake.SleepControl(func() { <-open })
		return nil, nil, false // served once the gate opens, with what was produced meanwhile
	})
	return g
}

func (g *fetchGate) partitions(req *kmsg.FetchRequest) []int32 {
	var ps []int32
	for _, t := range req.Topics {
		if t.Topic == g.topic {
			for _, p := range t.Partitions {
				ps = append(ps, p.Partition)
			}
		}
	}
	return ps
}

// close holds every later fetch of the topic and returns once a fetch of each partition is
// held (so that no fetch issued before is still in flight: a reader sends its next fetch
// only after the previous one was answered).
func (g *fetchGate) close(t *testing.T) {
	t.Helper()
	g.mu.Lock()
	g.open = make(chan struct{})
	g.held = map[int32]bool{}
	g.mu.Unlock()
	for {
		g.mu.Lock()
		n := len(g.held)
		g.mu.Unlock()
		if n == kafkatest.Partitions {
			return
		}
		<-g.heldCh
	}
}

func (g *fetchGate) release() {
	g.mu.Lock()
	close(g.open)
	g.mu.Unlock()
}

// TestBudgetDoesNotRevertTier: PUT /v1/accounts/{org} with a new tier, followed at once by
// PUT /v1/accounts/{org}/budgets/{project} before the ledger folded the tier change: once
// both are folded the organization has the new tier and the budget. (The budget route used to
// re-publish the tier, priority and suspension it read from the folded view, so the tier
// silently went back.) The ledger's fetches are held by the kfake broker meanwhile, so the
// order is certain.
func TestBudgetDoesNotRevertTier(t *testing.T) {
	c := kafkatest.Start(t)
	if c.Fake == nil {
		t.Skip("holds the ledger's fetches in the embedded broker (kfake)")
	}
	g := newFetchGate(c, c.Topics.Events)
	r := start(t, testConfig(c))
	if code, b := call(t, "PUT", r.base+"/v1/accounts/org", adminToken, map[string]any{"tier": "free", "priority": "batch"}); code != 202 {
		t.Fatalf("tier free: %d %s", code, b)
	}
	waitAccount(t, r.base, "org", func(v view.Account) bool { return v.Tier == "free" })

	g.close(t)
	if code, b := call(t, "PUT", r.base+"/v1/accounts/org", adminToken, map[string]any{"tier": "pro", "priority": "batch"}); code != 202 {
		t.Fatalf("tier pro: %d %s", code, b)
	}
	if code, b := call(t, "PUT", r.base+"/v1/accounts/org/budgets/p1", adminToken, map[string]any{"budget_micros": 2_000_000}); code != 202 {
		t.Fatalf("budget: %d %s", code, b)
	}
	g.release()

	v := waitAccount(t, r.base, "org", func(v view.Account) bool { return len(v.Projects) == 1 })
	if v.Tier != "pro" || v.Priority != "batch" || v.Projects[0].ProjectID != "p1" || v.Projects[0].BudgetMicros != 2_000_000 {
		t.Fatalf("after tier pro then budget: tier %q priority %q projects %+v; want tier pro, priority batch, p1's budget 2000000",
			v.Tier, v.Priority, v.Projects)
	}
}
