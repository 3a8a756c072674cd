// Package waitfor polls a condition in tests of an asynchronous pipeline.
package waitfor

import (
	"testing"
	"time"
)

// Eventually polls f every 50 ms until it returns nil, and fails the test with f's last error
// when d has passed.
func Eventually(t testing.TB, what string, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after %s: %v", what, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
