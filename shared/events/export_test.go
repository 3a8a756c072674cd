package events

import "reflect"

// FastPath exposes the Decoder's hand parser to the external tests: ok is false when it
// leaves the message to Decode.
func (d *Decoder) FastPath(b []byte) (ev Event, ok bool) { return d.fast(b) }

// ValidateTags runs the generated per-field checks of a payload (validateTags, codec_gen.go).
func ValidateTags(d Data) error {
	v := reflect.New(reflect.TypeOf(d))
	v.Elem().Set(reflect.ValueOf(d))
	return v.Interface().(interface{ validateTags() error }).validateTags()
}
