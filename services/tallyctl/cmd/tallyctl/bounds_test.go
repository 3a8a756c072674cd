package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/kafkax"
)

// TestStatementSurvivesFarFutureExpiry: a grant expiring after 2262 (where int64
// nanoseconds end) used to be accepted, wrap around to a breakage dated in the 1700s that no
// consumer could decode, and from then on `tallyctl statement` failed for every account and
// reconcile failed. Now tallyctl refuses the flag, and a credits.granted that reaches the
// events topic anyway is dead-lettered by the ledger: statements and reconcile still work.
func TestStatementSurvivesFarFutureExpiry(t *testing.T) {
	st := startCLIStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, args := range [][]string{
		{"grant", "-account", "far", "-micros", "5", "-expires", "2300-01-01T00:00:00Z"},
		{"grant", "-account", "far", "-micros", "5", "-expires", "2020-01-01T00:00:00Z"},
		{"grant", "-account", "far", "-micros", "1000000000000001"},
		{"adjust", "-account", "far", "-micros", "-1000000000000001", "-reason", "r"},
	} {
		if code, out, stderr := run(t, args...); code == 0 {
			t.Errorf("%v accepted: %s", args, out)
		} else if !strings.Contains(stderr, "-expires") && !strings.Contains(stderr, "-micros") {
			t.Errorf("%v: exit %d, message %q does not name the flag", args, code, stderr)
		}
	}
	// The same grant published straight to the events topic, past every edge.
	id, _ := uuid.NewV7()
	raw := fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"test","type":"tally.credits.granted.v1","time":%q,"subject":"far",`+
		`"datacontenttype":"application/json","data":{"grant_id":"g-2300","account_id":"far","amount_micros":5000000,`+
		`"source":"promotion","priority":0,"expires_at":"2300-01-01T00:00:00Z"}}`, id.String(), time.Now().UTC().Format(time.RFC3339Nano))
	w := kafkax.NewWriter(st.Brokers, st.Topics.Events, kafkax.DefaultWriterConfig)
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("far"), Value: []byte(raw)}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if code, out, stderr := run(t, "grant", "-account", "acct_ok", "-micros", "7000000", "-id", "g-ok"); code != 0 {
		t.Fatalf("grant: exit %d, %s %s", code, out, stderr)
	}
	var stmt struct {
		ClosingMicros int64 `json:"closing_micros"`
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, out, stderr := run(t, "statement", "-account", "acct_ok", "-format", "json")
		if code == 0 && json.Unmarshal([]byte(out), &stmt) == nil && stmt.ClosingMicros == 7_000_000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("statement for acct_ok: exit %d, %s %s", code, out, stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	deadline = time.Now().Add(60 * time.Second)
	for {
		code, out, stderr := run(t, "reconcile")
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reconcile: exit %d\n%s\n%s", code, out, stderr)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The far grant was never applied.
	if code, out, _ := run(t, "account", "-account", "far"); code == 0 && strings.Contains(out, "g-2300") {
		t.Fatalf("the grant expiring in 2300 was applied: %s", out)
	}
}
