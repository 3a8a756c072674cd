package ledger_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/services/ledger/view"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestPurchaseOnKafka: a purchase sent twice is one grant in the fold; once folded, a retry
// publishes nothing and a retry with another amount is 409; the payment reference reaches
// the credits.granted event on the events topic.
func TestPurchaseOnKafka(t *testing.T) {
	c := kafkatest.Start(t)
	r := start(t, testConfig(c))
	purchase := map[string]any{"purchase_id": "order-1", "payment_ref": "pi_3Nabc", "amount_micros": 5_000_000}
	var ids []string
	for range 2 {
		code, b := call(t, "POST", r.base+"/v1/accounts/acme/purchases", adminToken, purchase)
		var acc api.Accepted
		if code != 202 || json.Unmarshal(b, &acc) != nil {
			t.Fatalf("purchase: %d %s", code, b)
		}
		ids = append(ids, acc.EventID)
	}
	if ids[0] != ids[1] || ids[0] != api.PurchaseEventID("acme", "order-1") {
		t.Fatalf("event ids %v", ids)
	}
	// A grant after both purchases on the same partition: once it is folded, both are.
	if code, b := call(t, "POST", r.base+"/v1/accounts/acme/grants", adminToken, map[string]any{"grant_id": "marker", "amount_micros": 1}); code != 202 {
		t.Fatalf("marker: %d %s", code, b)
	}
	v := waitAccount(t, r.base, "acme", func(v view.Account) bool { return hasGrant(v, "marker") })
	if v.AvailableMicros != 5_000_001 || len(v.Grants) != 2 || !hasGrant(v, "purchase:order-1") {
		t.Fatalf("two copies of the purchase did not make one grant: %+v", v)
	}
	// The copies on the events topic, each with the payment reference: two when both calls
	// came before the fold, one when the ledger folded the first before the second arrived
	// (the second then answers from the fold without publishing).
	copiesOnTopic := func() int {
		t.Helper()
		var copies []events.CreditsGranted
		if err := readTopic(t, c.Brokers, c.Topics.Events, func(e events.Event) {
			if g, ok := e.Payload.(events.CreditsGranted); ok && e.ID == ids[0] {
				copies = append(copies, g)
			}
		}); err != nil {
			t.Fatal(err)
		}
		for _, g := range copies {
			if g.PaymentRef != "pi_3Nabc" || g.GrantID != "purchase:order-1" || g.Source != events.GrantPurchase || g.AdminKeyID != "ops" {
				t.Fatalf("event %+v", g)
			}
		}
		return len(copies)
	}
	before := copiesOnTopic()
	if before < 1 || before > 2 {
		t.Fatalf("%d copies of the purchase event on the topic, want 1 or 2", before)
	}
	// Retries after the fold answer from it and publish nothing.
	code, b := call(t, "POST", r.base+"/v1/accounts/acme/purchases", adminToken, purchase)
	if code != 202 || !strings.Contains(string(b), ids[0]) {
		t.Fatalf("retry after the fold: %d %s", code, b)
	}
	purchase["amount_micros"] = 6_000_000
	code, b = call(t, "POST", r.base+"/v1/accounts/acme/purchases", adminToken, purchase)
	if code != 409 || !strings.Contains(string(b), api.CodeIdempotencyConflict) {
		t.Fatalf("retry with another amount: %d %s", code, b)
	}
	if code, b := call(t, "POST", r.base+"/v1/accounts/acme/grants", adminToken, map[string]any{"grant_id": "marker2", "amount_micros": 1}); code != 202 {
		t.Fatalf("marker2: %d %s", code, b)
	}
	v = waitAccount(t, r.base, "acme", func(v view.Account) bool { return hasGrant(v, "marker2") })
	if after := copiesOnTopic(); after != before || v.AvailableMicros != 5_000_002 {
		t.Fatalf("after the retries: %d copies (were %d), available %d µ; want no new copy and one grant", after, before, v.AvailableMicros)
	}
}

// TestCustomerKeysFile: the customer keys file is read at start, a key reads only its
// account, admin and customer tokens each stay on their own routes, an added key is picked
// up by the poll, and a bad edit leaves the keys in force.
func TestCustomerKeysFile(t *testing.T) {
	c := kafkatest.Start(t)
	secret := strings.Repeat("k", 32)
	file := filepath.Join(t.TempDir(), "customer-keys")
	tokA, tokB := "tcu_acme-token", "tcu_other-token"
	entry := func(id, tok, scope string) string {
		return id + ":hmac:" + httpx.HMACKey([]byte(secret), tok) + ":" + scope + "\n"
	}
	if err := os.WriteFile(file, []byte(entry("acme-key", tokA, "account=acme")), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(c)
	cfg.KeyHashSecret, cfg.CustomerKeysFile, cfg.CustomerKeysPollMs = secret, file, 20
	r := start(t, cfg)
	for _, acct := range []string{"acme", "other"} {
		if code, b := call(t, "POST", r.base+"/v1/accounts/"+acct+"/grants", adminToken, map[string]any{"amount_micros": 3_000_000}); code != 202 {
			t.Fatalf("grant: %d %s", code, b)
		}
		waitAccount(t, r.base, acct, func(v view.Account) bool { return v.AvailableMicros == 3_000_000 })
	}
	code, b := call(t, "GET", r.base+"/v1/customer/accounts/acme", tokA, nil)
	var a api.CustomerAccount
	if code != 200 || json.Unmarshal(b, &a) != nil || a.AvailableMicros != 3_000_000 || len(a.Grants) != 1 || a.AsOf.IsZero() {
		t.Fatalf("customer read: %d %s", code, b)
	}
	for _, c := range []struct {
		path, token string
		want        int
	}{
		{"/v1/customer/accounts/other", tokA, 403},
		{"/v1/customer/accounts/acme/usage", tokA, 200},
		{"/v1/customer/accounts/acme/requests", tokA, 200},
		{"/v1/accounts/acme", tokA, 403},
		{"/v1/customer/accounts/acme", adminToken, 403},
		{"/v1/customer/accounts/other", tokB, 403}, // not in the file yet
	} {
		if code, b := call(t, "GET", r.base+c.path, c.token, nil); code != c.want {
			t.Errorf("GET %s: %d %s, want %d", c.path, code, b, c.want)
		}
	}
	// An appended key is picked up by the poll.
	f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(entry("other-key", tokB, "account=other"))
	_ = f.Close()
	deadline := time.Now().Add(30 * time.Second)
	for code, _ = call(t, "GET", r.base+"/v1/customer/accounts/other", tokB, nil); code != 200 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		code, _ = call(t, "GET", r.base+"/v1/customer/accounts/other", tokB, nil)
	}
	if code != 200 || r.svc.CustomerKeys() != 2 {
		t.Fatalf("appended key: %d, %d keys", code, r.svc.CustomerKeys())
	}
	// A bad edit is refused and the keys in force stay.
	if err := os.WriteFile(file, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.svc.ReloadCustomerKeys(); err == nil {
		t.Fatal("a bad keys file was accepted")
	}
	if code, b := call(t, "GET", r.base+"/v1/customer/accounts/acme", tokA, nil); code != 200 || r.svc.CustomerKeys() != 2 {
		t.Fatalf("after a bad edit: %d %s, %d keys", code, b, r.svc.CustomerKeys())
	}
}

// TestCustomerKeysSettings: the keys file needs the key-hash secret and must parse.
func TestCustomerKeysSettings(t *testing.T) {
	cfg := testConfig(&kafkatest.Cluster{Brokers: []string{"127.0.0.1:9"}, Prefix: "t."})
	file := filepath.Join(t.TempDir(), "keys")
	_ = os.WriteFile(file, []byte("a:hmac:"+httpx.HMACKey([]byte(strings.Repeat("k", 32)), "tcu_a")+":account=a\n"), 0o600)
	cfg.Group = "g"
	cfg.CustomerKeysFile = file
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "LEDGER_CUSTOMER_KEYS_FILE") {
		t.Fatalf("no secret: %v", err)
	}
	cfg.KeyHashSecret = strings.Repeat("k", 32)
	if err := cfg.Validate(); err != nil {
		t.Fatalf("valid: %v", err)
	}
	cfg.CustomerKeysPollMs = -1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "LEDGER_CUSTOMER_KEYS_POLL_MS") {
		t.Fatalf("poll -1: %v", err)
	}
	cfg.CustomerKeysPollMs = 0
	cfg.CustomerKeysFile = filepath.Join(t.TempDir(), "missing")
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "LEDGER_CUSTOMER_KEYS_FILE") {
		t.Fatalf("missing file: %v", err)
	}
}

// TestCustomerKeysSIGHUP: the ledger binary re-reads the customer keys file on SIGHUP (here
// with polling off).
func TestCustomerKeysSIGHUP(t *testing.T) {
	dumpLogsOnFailure(t)
	c := kafkatest.Start(t)
	secret := strings.Repeat("k", 32)
	file := filepath.Join(t.TempDir(), "customer-keys")
	entry := func(id, tok, scope string) string {
		return id + ":hmac:" + httpx.HMACKey([]byte(secret), tok) + ":" + scope + "\n"
	}
	if err := os.WriteFile(file, []byte(entry("a", "tcu_a", "account=acme")), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, buildLedger(t), c, "LEDGER_KEY_HASH_SECRET="+secret, "LEDGER_CUSTOMER_KEYS_FILE="+file,
		"LEDGER_CUSTOMER_KEYS_POLL_MS=0", "LEDGER_ENSURE_TOPICS=true")
	waitReady(t, p.base)
	// tcu_b is not a key yet: 403. Once it is, its own account (unknown here) is 404.
	if code, b := call(t, "GET", p.base+"/v1/customer/accounts/other", "tcu_b", nil); code != 403 {
		t.Fatalf("before: %d %s", code, b)
	}
	if err := os.WriteFile(file, []byte(entry("a", "tcu_a", "account=acme")+entry("b", "tcu_b", "account=other")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, b := call(t, "GET", p.base+"/v1/customer/accounts/other", "tcu_b", nil)
		if code == 404 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGHUP: %d %s", code, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTwoLedgersAnswerCustomerKeys: with two instances in one group, each answers the customer
// routes for every account it or its peer owns (the peer is asked with the customer's token),
// an account key reading another account is 403 from both, an organisation key reading an
// account outside its organisation is 403 (not 503) whichever instance owns it, and an account
// key whose account no instance knows is 404.
func TestTwoLedgersAnswerCustomerKeys(t *testing.T) {
	c := kafkatest.Start(t)
	secret := strings.Repeat("k", 32)
	file := filepath.Join(t.TempDir(), "customer-keys")
	const n = 8
	var keys strings.Builder
	tok := func(i int) string { return fmt.Sprintf("tcu_acct-%d", i) }
	for i := range n {
		keys.WriteString(fmt.Sprintf("k%d:hmac:%s:account=acct-cu-%d\n", i, httpx.HMACKey([]byte(secret), tok(i)), i))
	}
	keys.WriteString("org:hmac:" + httpx.HMACKey([]byte(secret), "tcu_org") + ":org=org-1\n")
	keys.WriteString("ghost:hmac:" + httpx.HMACKey([]byte(secret), "tcu_ghost") + ":account=ghost\n")
	if err := os.WriteFile(file, []byte(keys.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	addrA, addrB := freeAddr(t), freeAddr(t)
	cfgA, cfgB := testConfig(c), testConfig(c)
	for _, cfg := range []*ledger.Config{&cfgA, &cfgB} {
		cfg.KeyHashSecret, cfg.CustomerKeysFile = secret, file
	}
	cfgA.ListenAddr, cfgA.Peers = addrA, "http://"+addrB
	cfgB.ListenAddr, cfgB.Peers = addrB, "http://"+addrA
	a := start(t, cfgA)
	b := start(t, cfgB)
	var evs []events.Event
	for i := range n {
		evs = append(evs, ev(t, t0, &events.CreditsGranted{AccountID: fmt.Sprintf("acct-cu-%d", i),
			GrantID: fmt.Sprintf("g-cu-%d", i), AmountMicros: int64(1_000_000 * (i + 1)), Source: events.GrantPurchase}))
	}
	produce(t, c, evs...)
	for i := range n {
		waitAccount(t, a.base, fmt.Sprintf("acct-cu-%d", i), func(v view.Account) bool { return v.AvailableMicros == int64(1_000_000*(i+1)) })
	}
	// Wait until the partitions are split, so that some answers below come from the peer.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ownA, ownB := 0, 0
		for i := range n {
			if localOnly(t, a.base, fmt.Sprintf("acct-cu-%d", i)) == 200 {
				ownA++
			}
			if localOnly(t, b.base, fmt.Sprintf("acct-cu-%d", i)) == 200 {
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
	for _, base := range []string{a.base, b.base} {
		for i := range n {
			id := fmt.Sprintf("acct-cu-%d", i)
			code, body := call(t, "GET", base+"/v1/customer/accounts/"+id, tok(i), nil)
			var ca api.CustomerAccount
			if code != 200 || json.Unmarshal(body, &ca) != nil || ca.AccountID != id || ca.AvailableMicros != int64(1_000_000*(i+1)) {
				t.Fatalf("%s: key %d on its account: %d %s", base, i, code, body)
			}
			if code, body := call(t, "GET", base+"/v1/customer/accounts/"+id+"/usage", tok((i+1)%n), nil); code != 403 {
				t.Fatalf("%s: key %d on %s: %d %s", base, (i+1)%n, id, code, body)
			}
			if code, body := call(t, "GET", base+"/v1/customer/accounts/"+id, "tcu_org", nil); code != 403 {
				t.Fatalf("%s: org key on %s (no organisation): %d %s", base, id, code, body)
			}
		}
		if code, body := call(t, "GET", base+"/v1/customer/accounts/ghost", "tcu_ghost", nil); code != 404 {
			t.Fatalf("%s: key of an unknown account: %d %s", base, code, body)
		}
	}
}
