package httpx

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Key hashing. A key is configured as "id:hmac:<hex>", the HMAC-SHA256 of its secret under
// the service's key-hash secret (a server secret that never leaves the service's settings):
// a leaked keys setting alone does not let anyone test guesses offline, and the digest is
// also the lookup key, so authenticating is one HMAC and one map lookup whatever the number
// of keys. The older form "id:<sha256-hex>" (unsalted SHA-256) is still accepted so that a
// running deployment keeps working, and costs one comparison per such key; migrate with
// `tallyctl hash-key` (see the README's Security section).

// HashSecretBytesMin is the least key-hash secret length.
const HashSecretBytesMin = 32

// legacyKey is an unsalted SHA-256 entry.
type legacyKey struct {
	id   string
	hash [sha256.Size]byte
}

// Keyring authenticates bearer keys against hashed keys. The secret is never stored.
type Keyring struct {
	byMAC    map[[sha256.Size]byte]string
	legacy   []legacyKey
	secret   []byte
	prefix   string
	throttle *AuthThrottle
}

// KeyringOptions configure ParseKeyringWith.
type KeyringOptions struct {
	// HashSecret is the HMAC key "id:hmac:<hex>" entries were made with (>= 32 bytes).
	HashSecret []byte
	// TokenPrefix, when set, is what every token accepted through an hmac entry starts with
	// ("tk_" for edge keys, "ta_" for admin tokens): a secret made for one role is refused by
	// the other even if an operator configured its hash in both. Legacy entries predate it.
	TokenPrefix string
	// Throttle, when set, refuses client addresses that failed too often (429).
	Throttle *AuthThrottle
}

// ParseKeyring parses legacy "id:sha256hex,..." entries without the options.
func ParseKeyring(s string) (*Keyring, error) { return ParseKeyringWith(s, KeyringOptions{}) }

// ParseKeyringWith parses "id:hmac:<hex>" and legacy "id:<sha256-hex>" entries, comma
// separated.
func ParseKeyringWith(s string, o KeyringOptions) (*Keyring, error) {
	if len(o.HashSecret) > 0 && len(o.HashSecret) < HashSecretBytesMin {
		return nil, fmt.Errorf("key-hash secret: at least %d bytes", HashSecretBytesMin)
	}
	k := &Keyring{byMAC: map[[sha256.Size]byte]string{}, secret: o.HashSecret, prefix: o.TokenPrefix, throttle: o.Throttle}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, rest, ok := strings.Cut(part, ":")
		hexHash, isMAC := strings.CutPrefix(rest, "hmac:")
		raw, err := hex.DecodeString(hexHash)
		if !ok || id == "" || err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("key %q: want id:hmac:<hmac-sha256-hex> or id:<sha256-hex>", id)
		}
		var h [sha256.Size]byte
		copy(h[:], raw)
		if isMAC {
			if len(o.HashSecret) == 0 {
				return nil, fmt.Errorf("key %q: an hmac entry needs the key-hash secret", id)
			}
			if _, dup := k.byMAC[h]; dup {
				return nil, fmt.Errorf("key %q: the same secret as another key", id)
			}
			k.byMAC[h] = id
		} else {
			k.legacy = append(k.legacy, legacyKey{id: id, hash: h})
		}
	}
	return k, nil
}

// HashSecret returns the hex SHA-256 of a secret, the legacy configured form.
func HashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// HMACKey returns the configured form's digest of token under the key-hash secret:
// configure the key as "id:hmac:" + HMACKey(secret, token).
func HMACKey(secret []byte, token string) string {
	d := mac(secret, token)
	return hex.EncodeToString(d[:])
}

func mac(secret []byte, token string) (d [sha256.Size]byte) {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(token))
	m.Sum(d[:0])
	return d
}

// Len is the number of keys.
func (k *Keyring) Len() int { return len(k.byMAC) + len(k.legacy) }

// Legacy is the number of unsalted SHA-256 entries (to be migrated).
func (k *Keyring) Legacy() int { return len(k.legacy) }

// Authenticate returns the key id for the request's bearer token. A client address that
// failed too often is 429 before its token is looked at; a missing token is 401
// unauthenticated, a wrong one 403 forbidden (and counts as a failure of its address).
func (k *Keyring) Authenticate(r *http.Request) (string, *Error) {
	addr := remoteHost(r)
	if wait := k.throttle.blocked(addr); wait > 0 {
		e := Errorf(http.StatusTooManyRequests, CodeTooManyAuthFailures, "too many failed authentications from this address")
		e.RetryAfterSeconds = int((wait + time.Second - 1) / time.Second)
		return "", e
	}
	auth := r.Header.Get("Authorization")
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || token == "" {
		return "", Errorf(http.StatusUnauthorized, CodeUnauthenticated, "missing bearer API key")
	}
	if id, ok := k.lookup(token); ok {
		return id, nil
	}
	k.throttle.fail(addr)
	return "", Errorf(http.StatusForbidden, CodeForbidden, "API key not accepted")
}

func (k *Keyring) lookup(token string) (string, bool) {
	// The role prefix holds for hmac entries; legacy entries predate it.
	if len(k.byMAC) > 0 && (k.prefix == "" || strings.HasPrefix(token, k.prefix)) {
		if id, ok := k.byMAC[mac(k.secret, token)]; ok {
			return id, true
		}
	}
	if len(k.legacy) == 0 {
		return "", false
	}
	// Every legacy hash is compared in constant time, so the time taken does not reveal
	// which key nearly matched.
	h := sha256.Sum256([]byte(token))
	found := -1
	for i := range k.legacy {
		if subtle.ConstantTimeCompare(h[:], k.legacy[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", false
	}
	return k.legacy[found].id, true
}

func remoteHost(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// AuthThrottle counts failed authentications per client address in fixed windows and
// refuses an address for the rest of its window once it reached the limit. Its memory is
// bounded: at most ClientsMax addresses are tracked; when the table is full, windows that
// ended are dropped, and if none has, a new address is not tracked (an attacker with more
// addresses than that is not slowed, but never exhausts memory).
type AuthThrottle struct {
	failuresMax int
	window      time.Duration
	clientsMax  int
	now         func() time.Time

	mu        sync.Mutex
	clients   map[string]*failures
	lastSweep time.Time
}

type failures struct {
	start time.Time
	n     int
}

// NewAuthThrottle allows failuresMax failures per window per address and tracks at most
// clientsMax addresses. now nil = time.Now.
func NewAuthThrottle(failuresMax int, window time.Duration, clientsMax int, now func() time.Time) (*AuthThrottle, error) {
	if failuresMax < 1 || window <= 0 || clientsMax < 1 {
		return nil, errors.New("auth throttle: failures, window and clients must be positive")
	}
	if now == nil {
		now = time.Now
	}
	return &AuthThrottle{failuresMax: failuresMax, window: window, clientsMax: clientsMax, now: now,
		clients: make(map[string]*failures, min(clientsMax, 1024))}, nil
}

// Tracked is the number of addresses in the table.
func (t *AuthThrottle) Tracked() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.clients)
}

// blocked returns how long addr must wait, 0 when it may try.
func (t *AuthThrottle) blocked(addr string) time.Duration {
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	f, ok := t.clients[addr]
	if !ok {
		return 0
	}
	now := t.now()
	end := f.start.Add(t.window)
	if !now.Before(end) {
		delete(t.clients, addr)
		return 0
	}
	if f.n < t.failuresMax {
		return 0
	}
	return end.Sub(now)
}

func (t *AuthThrottle) fail(addr string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	f, ok := t.clients[addr]
	if ok && !now.Before(f.start.Add(t.window)) {
		f.start, f.n = now, 0
	}
	if !ok {
		// A full table is swept at most once a second, so that many addresses cannot make
		// every failure walk the table.
		if len(t.clients) >= t.clientsMax && now.Sub(t.lastSweep) >= time.Second {
			t.lastSweep = now
			for a, g := range t.clients {
				if !now.Before(g.start.Add(t.window)) {
					delete(t.clients, a)
				}
			}
		}
		if len(t.clients) >= t.clientsMax {
			return
		}
		f = &failures{start: now}
		t.clients[addr] = f
	}
	f.n++
}
