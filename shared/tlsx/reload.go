package tlsx

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// reloader serves a key pair and re-reads it when the files change. Handshakes take the
// lock-free path; at most one handshake per check interval stats the files.
type reloader struct {
	certFile, keyFile string
	checkNs           int64
	now               func() time.Time

	cert        atomic.Pointer[tls.Certificate]
	nextCheckNs atomic.Int64

	mu                  sync.Mutex // guards the stamps during a reload
	certStamp, keyStamp os.FileInfo
}

func newReloader(certFile, keyFile string, check time.Duration, now func() time.Time) (*reloader, error) {
	r := &reloader{certFile: certFile, keyFile: keyFile, checkNs: check.Nanoseconds(), now: now}
	if err := r.reload(); err != nil {
		return nil, err
	}
	r.nextCheckNs.Store(now().UnixNano() + r.checkNs)
	return r, nil
}

// current returns the key pair to present, first reloading it if the check interval has
// passed and the files changed.
func (r *reloader) current() *tls.Certificate {
	now := r.now().UnixNano()
	next := r.nextCheckNs.Load()
	if now >= next && r.nextCheckNs.CompareAndSwap(next, now+r.checkNs) {
		if err := r.reload(); err != nil {
			// Keep the previous pair: a half-written rotation must not take the server down.
			// The stamps stay old, so the next check retries.
			slog.Warn("tlsx: certificate reload failed, serving the previous certificate",
				"cert_file", r.certFile, "key_file", r.keyFile, "err", err)
		}
	}
	return r.cert.Load()
}

// reload loads the pair when either file's stamp differs from the last loaded one. It stats
// before reading, so a change made during the read is seen at the next check.
func (r *reloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cs, err := os.Stat(r.certFile)
	if err != nil {
		return fmt.Errorf("tlsx: stat certificate: %w", err)
	}
	ks, err := os.Stat(r.keyFile)
	if err != nil {
		return fmt.Errorf("tlsx: stat key: %w", err)
	}
	if r.cert.Load() != nil && sameStamp(cs, r.certStamp) && sameStamp(ks, r.keyStamp) {
		return nil
	}
	pair, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("tlsx: load key pair %s, %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert.Store(&pair)
	r.certStamp, r.keyStamp = cs, ks
	return nil
}

// sameStamp: same file (inode; an atomic rename or a Kubernetes symlink swap changes it),
// same size, same modification time (an in-place rewrite changes it).
func sameStamp(a, b os.FileInfo) bool {
	return b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
