package pricebook

import (
	_ "embed"
	"fmt"
)

//go:embed default.json
var defaultJSON []byte

// DefaultJSON returns the built-in price book (the one used when no path is configured).
func DefaultJSON() []byte { return append([]byte(nil), defaultJSON...) }

// Default returns the built-in price book. It panics only if the embedded file is invalid,
// which pricebook_test.go rules out.
func Default() *Book {
	b, err := Parse(defaultJSON)
	if err != nil {
		panic(fmt.Sprintf("pricebook: built-in default is invalid: %v", err))
	}
	return b
}

// LoadOrDefault loads path, or returns the built-in book when path is empty.
func LoadOrDefault(path string) (*Book, error) {
	if path == "" {
		return Default(), nil
	}
	return Load(path)
}
