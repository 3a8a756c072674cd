package decide

import (
	"syscall"
	"unsafe"
)

// adviseHuge asks the kernel to back the 2 MiB-aligned part of s with transparent huge pages
// (madvise MADV_HUGEPAGE; it matters where THP is in "madvise" mode, the common default). The
// account slab and its index are read at random: with 4 KiB pages nearly every decision pays a
// TLB miss, and a page walk, on each of them. Errors are ignored: the hint is optional.
func adviseHuge[T any](s []T) {
	if cap(s) == 0 {
		return
	}
	const huge = 2 << 20
	var zero T
	base := unsafe.Pointer(unsafe.SliceData(s))
	size := uintptr(cap(s)) * unsafe.Sizeof(zero)
	skip := (huge - uintptr(base)%huge) % huge
	if size < skip+huge {
		return
	}
	n := (size - skip) &^ (huge - 1)
	_ = syscall.Madvise(unsafe.Slice((*byte)(unsafe.Add(base, skip)), n), syscall.MADV_HUGEPAGE)
}
