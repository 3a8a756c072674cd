package events

import (
	"crypto/sha1"

	"github.com/google/uuid"
)

// derivedStackMax is the longest "cause/leg" name AppendDerivedID hashes without allocating.
const derivedStackMax = 240

// AppendDerivedID appends DerivedID(causeID, leg), the same 36 bytes, to dst. It does not
// allocate when dst has room and the cause and leg are short (event ids and leg names
// are): the ledger derives several ids per event it folds.
func AppendDerivedID(dst []byte, causeID, leg string) []byte {
	var buf [16 + derivedStackMax]byte
	in := buf[:0]
	if n := 16 + len(causeID) + 1 + len(leg); n > len(buf) {
		in = make([]byte, 0, n)
	}
	in = append(in, derivedNamespace[:]...)
	in = append(in, causeID...)
	in = append(in, '/')
	in = append(in, leg...)
	sum := sha1.Sum(in)
	// UUIDv5 (RFC 9562): version 5 in the high nibble of byte 6, variant 10 in byte 8, as
	// uuid.NewSHA1 sets them.
	sum[6] = sum[6]&0x0f | 0x50
	sum[8] = sum[8]&0x3f | 0x80
	return appendUUID(dst, sum[:16])
}

// AppendUUID appends the canonical lower-case 8-4-4-4-12 form of u, what u.String() returns,
// without allocating when dst has room.
func AppendUUID(dst []byte, u uuid.UUID) []byte { return appendUUID(dst, u[:]) }

// appendUUID appends the canonical lower-case 8-4-4-4-12 form of u (16 bytes).
func appendUUID(dst []byte, u []byte) []byte {
	for i, c := range u[:16] {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, hexDigits[c>>4], hexDigits[c&0x0f])
	}
	return dst
}
