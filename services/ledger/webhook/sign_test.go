package webhook_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/ledger/webhook"
)

func TestSignVerify(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	body := []byte(`{"specversion":"1.0","id":"n-1","type":"tally.notification.v1"}`)
	at := time.Unix(1_800_000_000, 0)
	h := webhook.Sign(secret, at, body)
	if !strings.HasPrefix(h, "t=1800000000,v1=") || len(h) != len("t=1800000000,v1=")+64 {
		t.Fatalf("header %q", h)
	}
	tol := 5 * time.Minute
	cases := []struct {
		name   string
		secret []byte
		header string
		body   []byte
		now    time.Time
		want   error
	}{
		{"valid", secret, h, body, at, nil},
		{"valid, receiver clock 4m ahead", secret, h, body, at.Add(4 * time.Minute), nil},
		{"valid, receiver clock 4m behind", secret, h, body, at.Add(-4 * time.Minute), nil},
		{"tampered body", secret, h, []byte(strings.Replace(string(body), "n-1", "n-2", 1)), at, webhook.ErrBadSignature},
		{"body with a trailing newline", secret, h, append(append([]byte{}, body...), '\n'), at, webhook.ErrBadSignature},
		{"wrong secret", []byte("another secret, also 32 bytes..."), h, body, at, webhook.ErrBadSignature},
		{"stale timestamp", secret, h, body, at.Add(tol + time.Second), webhook.ErrStaleSignature},
		{"timestamp from the future", secret, h, body, at.Add(-tol - time.Second), webhook.ErrStaleSignature},
		{"timestamp changed, signature kept", secret, strings.Replace(h, "t=1800000000", "t=1800000001", 1), body, at, webhook.ErrBadSignature},
		{"second v1 matches (rotation)", secret, "t=1800000000,v1=" + strings.Repeat("ab", 32) + "," + h[len("t=1800000000,"):], body, at, nil},
		{"unknown scheme ignored", secret, h + ",v0=zz", body, at, nil},
		{"no signature", secret, "t=1800000000", body, at, webhook.ErrMalformedSignature},
		{"no timestamp", secret, h[len("t=1800000000,"):], body, at, webhook.ErrMalformedSignature},
		{"two timestamps", secret, "t=1," + h, body, at, webhook.ErrMalformedSignature},
		{"short v1", secret, "t=1800000000,v1=abcd", body, at, webhook.ErrMalformedSignature},
		{"empty", secret, "", body, at, webhook.ErrMalformedSignature},
		{"huge", secret, h + "," + strings.Repeat("x=y,", 300), body, at, webhook.ErrMalformedSignature},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := webhook.Verify(c.secret, c.header, c.body, c.now, tol); !errors.Is(err, c.want) {
				t.Fatalf("Verify = %v, want %v", err, c.want)
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	f.Add(webhook.Sign(secret, time.Unix(100, 0), []byte("x")), []byte("x"))
	f.Add("t=,v1=", []byte{})
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		err := webhook.Verify(secret, header, body, time.Unix(100, 0), time.Minute)
		if err == nil && webhook.Verify(secret, header, append(body, '!'), time.Unix(100, 0), time.Minute) == nil {
			t.Fatalf("%q verifies two different bodies", header)
		}
	})
}
