package decide

import (
	"testing"
	"unsafe"
)

// TestAccountRecordIsThreeCacheLines pins the account record's size: the memory bound per
// account (ADMITTER_ACCOUNTS_MAX's ≈ 250 B) and the cache-line layout assume 192 bytes.
func TestAccountRecordIsThreeCacheLines(t *testing.T) {
	if n := unsafe.Sizeof(account{}); n != 192 {
		t.Fatalf("account record is %d bytes, want 192", n)
	}
	if off := unsafe.Offsetof(account{}.availableMicros); off >= 64 {
		t.Fatalf("the balances a decision reads start at byte %d, past the first cache line", off)
	}
}
