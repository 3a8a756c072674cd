package events

// FastPath exposes the Decoder's hand parser to the external tests: ok is false when it
// leaves the message to Decode.
func (d *Decoder) FastPath(b []byte) (ev Event, ok bool) { return d.fast(b) }
