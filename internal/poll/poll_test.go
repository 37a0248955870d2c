package poll_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/poll"
)

func TestWait(t *testing.T) {
	var n atomic.Int32
	go func() {
		for i := 0; i < 3; i++ {
			n.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	if !poll.Wait(5*time.Second, func() bool { return n.Load() == 3 }) {
		t.Fatal("Wait gave up on a condition that became true")
	}
	if poll.Wait(20*time.Millisecond, func() bool { return false }) {
		t.Fatal("Wait reported a condition that never held")
	}
}
