package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/tallyhq/tally/services/admitter"
	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/services/sink"
	"github.com/tallyhq/tally/services/tallyctl/stack"
)

// TestReconcileWhileTheLedgerTicks: the ledger publishes clock ticks into its idle partitions
// (here every 50 ms), so its watermark moves on while reconcile replays the log; reconcile
// must still compare every account (reading on what was appended and comparing again), not
// give up with "moved on". On a stack left idle a tick lands during almost every replay.
func TestReconcileWhileTheLedgerTicks(t *testing.T) {
	noStack(t)
	st := startCLIStackWith(t, stack.Config{
		Tune: func(_ *admitter.Config, l *ledger.Config, _ *sink.Config) { l.TickIntervalMs = 50 }})
	for _, acct := range []string{"acct-t1", "acct-t2", "acct-t3", "acct-t4", "acct-t5", "acct-t6"} {
		req, _ := http.NewRequest("POST", st.LedgerURL+"/v1/accounts/"+acct+"/grants", strings.NewReader(`{"amount_micros":2000000}`))
		req.Header.Set("Authorization", "Bearer "+st.AdminToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 202 {
			t.Fatalf("grant %s: %v %v", acct, err, resp)
		}
		resp.Body.Close()
	}
	accountUntil(t, "acct-t6", "the grant", func(v view.Account) bool { return v.AvailableMicros == 2_000_000 })
	// Each run replays while ticks land; every run must compare all six accounts.
	for i := 0; i < 3; i++ {
		code, out, stderr := run(t, "reconcile")
		if code != 0 || !strings.Contains(out, "reconcile: OK") {
			t.Fatalf("reconcile %d while the ledger ticks: exit %d\n%s\n%s", i, code, out, stderr)
		}
	}
}
