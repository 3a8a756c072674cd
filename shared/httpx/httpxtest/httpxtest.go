// Package httpxtest holds HTTP test helpers every Tally service shares.
package httpxtest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// SlowClients opens raw connections to addr that misbehave (headers then a stall, headers
// trickled a byte at a time, a body that stalls after bodyStart) and checks that the server
// closes each, or answers it with a 4xx, well before the client's own 15 s deadline: the
// server's read timeouts are set and work.
func SlowClients(t *testing.T, addr, path, token, bodyStart string) {
	t.Helper()
	const clientDeadline = 15 * time.Second
	head := "POST " + path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + "\r\nContent-Type: application/json\r\n"
	cases := []struct {
		name string
		send func(net.Conn) error
	}{
		{"headers then stall", func(c net.Conn) error { _, err := io.WriteString(c, head); return err }},
		{"header trickle", func(c net.Conn) error {
			for i := 0; i < len(head); i++ { // one byte every 100 ms: ~10 s for the whole head
				if _, err := c.Write([]byte{head[i]}); err != nil {
					return nil // cut off while sending: what we want
				}
				time.Sleep(100 * time.Millisecond)
			}
			return nil
		}},
		{"body stall", func(c net.Conn) error {
			_, err := io.WriteString(c, head+"Content-Length: 200\r\n\r\n"+bodyStart)
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
			start := time.Now()
			if err := conn.SetDeadline(start.Add(clientDeadline)); err != nil {
				t.Fatal(err)
			}
			if err := tc.send(conn); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("server still holds the connection after %s", time.Since(start))
			}
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode < 400 || resp.StatusCode >= 500 {
					t.Fatalf("slow client answered %d %s", resp.StatusCode, body)
				}
				// The connection is not kept for another request.
				if _, err := conn.Read(make([]byte, 1)); err == nil {
					t.Fatal("connection still open after the answer")
				}
			}
			t.Logf("cut off after %s (%v)", time.Since(start).Round(time.Millisecond), fmt.Sprint(err))
		})
	}
}
