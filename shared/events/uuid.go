package events

import "github.com/google/uuid"

// ParseID parses an event id in the canonical 36-character 8-4-4-4-12 form (either case), the
// only form Validate accepts: uuid.Parse alone also takes the braced, "urn:uuid:" and bare-hex
// forms. It does not allocate when s is canonical, so the fold and the sink's dedupe window
// can key events by it on their hot paths.
func ParseID(s string) (uuid.UUID, bool) {
	if len(s) != 36 {
		return uuid.UUID{}, false
	}
	u, err := uuid.Parse(s)
	if err != nil {
		return uuid.UUID{}, false // uuid.Parse returns the bytes it read before the bad one
	}
	return u, true
}
