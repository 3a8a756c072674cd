package ledger_test

import (
	"strings"
	"testing"

	"github.com/tallyhq/tally/shared/httpx/httpxtest"

	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestSlowClientsCutOff runs the ledger with small LEDGER_HTTP_* timeouts: a client that sends
// part of its headers and stalls, one that trickles header bytes, and one that sends headers
// and then stalls in the body are all cut off by the server (closed, or answered with a 4xx
// that publishes nothing), and a normal request on the same server is still answered.
func TestSlowClientsCutOff(t *testing.T) {
	c := kafkatest.Start(t)
	cfg := testConfig(c)
	cfg.HTTP.ReadHeaderTimeoutMs = 300
	cfg.HTTP.ReadTimeoutMs = 600
	cfg.HTTP.WriteTimeoutMs = 2000
	cfg.HTTP.IdleTimeoutMs = 1000
	r := start(t, cfg)
	addr := strings.TrimPrefix(r.base, "http://")
	httpxtest.SlowClients(t, addr, "/v1/accounts/acct_slow/grants", adminToken, `{"amount_micros":`)
	// None of them published a grant; a normal one is accepted.
	if code, b := call(t, "GET", r.base+"/v1/accounts/acct_slow", adminToken, nil); code != 404 {
		t.Fatalf("a slow client's grant took effect: %d %s", code, b)
	}
	if code, b := call(t, "POST", r.base+"/v1/accounts/acct_slow/grants", adminToken, map[string]any{"amount_micros": 5}); code != 202 {
		t.Fatalf("normal grant after the slow clients: %d %s", code, b)
	}
}
