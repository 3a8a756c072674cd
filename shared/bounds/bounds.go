// Package bounds checks settings against their ranges, with one error text for every service:
// "NAME: V out of range [LO, HI]".
package bounds

import "fmt"

// Number is a setting's value: an integer (converted to int64) or a float64.
type Number interface{ ~int64 | ~float64 }

// Check reports v outside [lo, hi] (a NaN is outside every range) as
// "NAME: V out of range [LO, HI]", and nil otherwise.
func Check[T Number](name string, v, lo, hi T) error {
	if v != v || v < lo || v > hi {
		return fmt.Errorf("%s: %v out of range [%v, %v]", name, v, lo, hi)
	}
	return nil
}

// Into returns a function that appends Check's error, its name preceded by prefix, to *errs
// when the value is out of range. A Validate method calls it once per setting, then joins errs.
func Into[T Number](errs *[]error, prefix string) func(name string, v, lo, hi T) {
	return func(name string, v, lo, hi T) {
		if err := Check(prefix+name, v, lo, hi); err != nil {
			*errs = append(*errs, err)
		}
	}
}
