package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Header names of a delivery.
const (
	// HeaderID carries the CloudEvents envelope id: the notification's identity. A receiver
	// dedupes on it (a delivery is at least once).
	HeaderID = "Tally-Webhook-Id"
	// HeaderSignature carries "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>".
	HeaderSignature = "Tally-Signature"
	// ContentType is the structured-mode CloudEvents media type of every body.
	ContentType = "application/cloudevents+json"
)

// SignatureHeaderBytesMax bounds the Tally-Signature header Verify reads.
const SignatureHeaderBytesMax = 1024

// Errors of Verify.
var (
	ErrMalformedSignature = errors.New("webhook: malformed Tally-Signature header")
	ErrStaleSignature     = errors.New("webhook: signature timestamp outside the tolerance")
	ErrBadSignature       = errors.New("webhook: no v1 signature matches the body")
)

func mac(secret []byte, t int64, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(strconv.FormatInt(t, 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Sign returns the Tally-Signature header value of body signed at t:
// "t=<unix seconds>,v1=<lowercase hex HMAC-SHA256(secret, "<t>.<body>")>".
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := t.Unix()
	return "t=" + strconv.FormatInt(ts, 10) + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

// Verify checks a Tally-Signature header against body, for receivers: the timestamp must be
// within tolerance of now (either way; it bounds how long a captured delivery can be
// replayed), and one of the header's v1 values must be the HMAC-SHA256 of "<t>.<body>" under
// secret (compared in constant time). Several v1 values are accepted, so a sender may sign
// with an old and a new secret while the secret is rotated. The body must be the raw bytes
// received, before any JSON parsing.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if len(header) > SignatureHeaderBytesMax {
		return ErrMalformedSignature
	}
	var ts int64
	haveT := false
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrMalformedSignature
		}
		switch k {
		case "t":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || haveT || n < 0 {
				return ErrMalformedSignature
			}
			ts, haveT = n, true
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != sha256.Size {
				return ErrMalformedSignature
			}
			sigs = append(sigs, b)
		}
		// Other schemes are ignored, so a newer sender stays readable.
	}
	if !haveT || len(sigs) == 0 {
		return ErrMalformedSignature
	}
	d := now.Sub(time.Unix(ts, 0))
	if d < 0 {
		d = -d
	}
	if d > tolerance {
		return ErrStaleSignature
	}
	want := mac(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return ErrBadSignature
}
