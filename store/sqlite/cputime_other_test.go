//go:build !unix

package sqlite

import "time"

// processCPU is not measured here (no getrusage): the benchmarks report 0.
func processCPU() time.Duration { return 0 }
