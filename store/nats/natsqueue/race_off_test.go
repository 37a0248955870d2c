//go:build !race

package natsqueue_test

const raceEnabled = false
