package fold

import (
	"github.com/google/uuid"

	"github.com/tallyhq/tally/shared/events"
)

// UUID is an event id kept in 16 bytes rather than its 36-byte text, to bound the memory of
// open holds and grants.
type UUID [16]byte

// ParseUUID parses the canonical 8-4-4-4-12 form; anything else gives the zero UUID (event
// ids are validated as UUIDs by events.Decode before they reach the fold).
func ParseUUID(s string) UUID {
	u, _ := events.ParseID(s)
	return UUID(u)
}

// String is the canonical lower-case form.
func (u UUID) String() string { return uuid.UUID(u).String() }

// MarshalText encodes the canonical form.
func (u UUID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText parses the canonical form.
func (u *UUID) UnmarshalText(b []byte) error {
	*u = ParseUUID(string(b))
	return nil
}
