//go:build race

package natsqueue_test

// raceEnabled: the crash test sends fewer messages under the race detector.
const raceEnabled = true
