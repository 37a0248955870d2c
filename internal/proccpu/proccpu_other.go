//go:build !unix

// Package proccpu reads the CPU time the current process has used, for
// benchmarks that report CPU per operation.
package proccpu

import "time"

// Used returns 0: the CPU time is not read on this system.
func Used() time.Duration { return 0 }
