package ledger_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/kafkax/kafkatest"
)

// TestSlowClientsCutOff runs the ledger with small LEDGER_HTTP_* timeouts: a client that sends
// part of its headers and stalls, one that trickles header bytes, and one that sends headers
// and then stalls in the body are all cut off by the server (closed, or answered with a 4xx
// that publishes nothing), and a normal request on the same server is still answered.
func TestSlowClientsCutOff(t *testing.T) {
	c := kafkatest.Start(t)
	cfg := testConfig(c)
	cfg.HTTPReadHeaderTimeoutMs = 300
	cfg.HTTPReadTimeoutMs = 600
	cfg.HTTPWriteTimeoutMs = 2000
	cfg.HTTPIdleTimeoutMs = 1000
	r := start(t, cfg)
	addr := strings.TrimPrefix(r.base, "http://")
	const clientDeadline = 15 * time.Second
	head := "POST /v1/accounts/acct_slow/grants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + adminToken + "\r\nContent-Type: application/json\r\n"
	cases := []struct {
		name string
		send func(net.Conn) error
	}{
		{"headers then stall", func(c net.Conn) error { _, err := io.WriteString(c, head); return err }},
		{"header trickle", func(c net.Conn) error {
			for i := 0; i < len(head); i++ { // one byte every 100 ms: ~13 s for the whole head
				if _, err := c.Write([]byte{head[i]}); err != nil {
					return nil // cut off while sending: what we want
				}
				time.Sleep(100 * time.Millisecond)
			}
			return nil
		}},
		{"body stall", func(c net.Conn) error {
			_, err := io.WriteString(c, head+"Content-Length: 200\r\n\r\n{\"amount_micros\":")
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			begin := time.Now()
			if err := conn.SetDeadline(begin.Add(clientDeadline)); err != nil {
				t.Fatal(err)
			}
			if err := tc.send(conn); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("server still holds the connection after %s", time.Since(begin))
			}
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode < 400 || resp.StatusCode >= 500 {
					t.Fatalf("slow client answered %d %s", resp.StatusCode, body)
				}
			}
			t.Logf("cut off after %s (%v)", time.Since(begin).Round(time.Millisecond), err)
		})
	}
	// None of them published a grant; a normal one is accepted.
	if code, b := call(t, "GET", r.base+"/v1/accounts/acct_slow", adminToken, nil); code != 404 {
		t.Fatalf("a slow client's grant took effect: %d %s", code, b)
	}
	if code, b := call(t, "POST", r.base+"/v1/accounts/acct_slow/grants", adminToken, map[string]any{"amount_micros": 5}); code != 202 {
		t.Fatalf("normal grant after the slow clients: %d %s", code, b)
	}
}
