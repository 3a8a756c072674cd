package ledger_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// localOnly asks one instance about an account without letting it ask its peers.
func localOnly(t *testing.T, base, id string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/v1/accounts/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("X-Tally-Forwarded", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestTwoLedgersAnswerForEveryAccount runs two ledger instances in one consumer group: each
// folds the partitions it owns, and either answers the account API for every account,
// whatever instance owns its partition (it asks its peers, LEDGER_PEERS).
func TestTwoLedgersAnswerForEveryAccount(t *testing.T) {
	c := kafkatest.Start(t)
	addrA, addrB := freeAddr(t), freeAddr(t)
	cfgA, cfgB := testConfig(c), testConfig(c)
	cfgA.ListenAddr, cfgA.Peers = addrA, "http://"+addrB
	cfgB.ListenAddr, cfgB.Peers = addrB, "http://"+addrA
	a := start(t, cfgA)
	b := start(t, cfgB)

	// Accounts on every partition, each with its own grant.
	const n = 24
	var evs []events.Event
	for i := range n {
		evs = append(evs, ev(t, t0, &events.CreditsGranted{AccountID: fmt.Sprintf("acct-two-%d", i),
			GrantID: fmt.Sprintf("g-two-%d", i), AmountMicros: int64(1_000_000 * (i + 1)), Source: events.GrantPurchase}))
	}
	produce(t, c, evs...)

	// Both instances answer for every account, with its own balance.
	for _, base := range []string{a.base, b.base} {
		for i := range n {
			id := fmt.Sprintf("acct-two-%d", i)
			v := waitAccount(t, base, id, func(v view.Account) bool { return v.AvailableMicros == int64(1_000_000*(i+1)) })
			if v.AccountID != id {
				t.Fatalf("%s answered %s for %s", base, v.AccountID, id)
			}
		}
	}
	// The partitions are split between the two: each instance knows only some accounts itself,
	// so the answers above for the others came from its peer.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ownA, ownB := 0, 0
		for i := range n {
			id := "acct-two-" + strconv.Itoa(i)
			if localOnly(t, a.base, id) == 200 {
				ownA++
			}
			if localOnly(t, b.base, id) == 200 {
				ownB++
			}
		}
		if ownA > 0 && ownB > 0 && ownA+ownB == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the instances know %d and %d of %d accounts themselves: the partitions are not split", ownA, ownB, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The journal is answered for any account too; an account no instance knows is 404. The
	// entries API is the owner's cache of the lines it folded itself, so lines folded before
	// the partitions were split may live on the other instance (or on none, after a restore):
	// a second grant, folded once the split has settled, is what every answer must show.
	var more []events.Event
	for i := range n {
		more = append(more, ev(t, t0, &events.CreditsGranted{AccountID: fmt.Sprintf("acct-two-%d", i),
			GrantID: fmt.Sprintf("g-two-more-%d", i), AmountMicros: 500_000, Source: events.GrantPurchase}))
	}
	produce(t, c, more...)
	for i := range n {
		waitAccount(t, a.base, fmt.Sprintf("acct-two-%d", i), func(v view.Account) bool { return v.AvailableMicros == int64(1_000_000*(i+1))+500_000 })
	}
	for _, base := range []string{a.base, b.base} {
		for i := range n {
			code, body := call(t, "GET", base+"/v1/accounts/acct-two-"+strconv.Itoa(i)+"/entries", adminToken, nil)
			var page view.Entries
			if code != 200 || json.Unmarshal(body, &page) != nil {
				t.Fatalf("%s entries of acct-two-%d: %d %s", base, i, code, body)
			}
			lines := 0
			for _, e := range page.Entries {
				if e.GrantID == fmt.Sprintf("g-two-more-%d", i) {
					lines++
				}
			}
			if lines != 2 {
				t.Fatalf("%s entries of acct-two-%d: %d lines of the second grant, want 2: %s", base, i, lines, body)
			}
		}
		if code, body := call(t, "GET", base+"/v1/accounts/nobody", adminToken, nil); code != 404 {
			t.Fatalf("%s unknown account: %d %s", base, code, body)
		}
		// Without the admin token a peer is never asked.
		if code, _ := call(t, "GET", base+"/v1/accounts/acct-two-0", "", nil); code != 401 {
			t.Fatalf("%s without a token: %d", base, code)
		}
	}
}

// A peer that cannot be asked makes an unknown account 503, not 404: it may live there.
func TestUnreachablePeerIsUnavailableNotNotFound(t *testing.T) {
	c := kafkatest.Start(t)
	cfg := testConfig(c)
	cfg.Peers = "http://" + freeAddr(t) // nothing listens there
	a := start(t, cfg)
	waitReady(t, a.base)
	code, body := call(t, "GET", a.base+"/v1/accounts/somewhere-else", adminToken, nil)
	if code != 503 || !strings.Contains(string(body), `"unavailable"`) {
		t.Fatalf("unknown account with a peer down: %d %s", code, body)
	}
}

func TestParsePeers(t *testing.T) {
	for in, ok := range map[string]bool{
		"": true, "http://a:8082": true, " http://a:8082/ , https://b:8082": true,
		"a:8082": false, "ftp://a": false, "http://": false, "http://a:8082?x=1": false,
	} {
		if _, err := ledger.ParsePeers(in); (err == nil) != ok {
			t.Errorf("ParsePeers(%q) = %v", in, err)
		}
	}
	many := strings.Repeat("http://a:1,", 65)
	if _, err := ledger.ParsePeers(many); err == nil {
		t.Error("65 peers accepted")
	}
	cfg := ledger.DefaultConfig()
	cfg.AdminKeys = "ops:" + httpx.HashSecret(adminToken)
	cfg.Peers, cfg.PeerTimeoutMs = "nope", 0
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "LEDGER_PEERS") || !strings.Contains(err.Error(), "LEDGER_PEER_TIMEOUT_MS") {
		t.Fatalf("Validate: %v", err)
	}
}
