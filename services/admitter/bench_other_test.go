//go:build !unix

package admitter

import "time"

// processCPU is not measured here.
func processCPU() time.Duration { return 0 }
