package resilience

import "time"

// window counts two quantities (a and b) over a sliding window made of
// fixed buckets, keeping running sums so that an add costs O(1) amortized.
// It is not safe for concurrent use: callers hold a lock.
type window struct {
	width   int64 // bucket width, ns
	head    int64 // index of the newest bucket
	buckets []wbucket
	a, b    int64
}

type wbucket struct{ a, b int64 }

func newWindow(d time.Duration, n int) window {
	if n < 1 {
		n = 1
	}
	w := int64(d) / int64(n)
	if w < 1 {
		w = 1
	}
	return window{width: w, buckets: make([]wbucket, n)}
}

// advance expires the buckets older than the window at now (Unix ns).
func (w *window) advance(now int64) int {
	cur := now / w.width
	n := int64(len(w.buckets))
	if cur <= w.head { // same bucket, or the clock went back: count in the newest
		return int(((w.head % n) + n) % n)
	}
	if cur-w.head >= n {
		clear(w.buckets)
		w.a, w.b = 0, 0
	} else {
		for i := w.head + 1; i <= cur; i++ {
			s := &w.buckets[((i%n)+n)%n]
			w.a -= s.a
			w.b -= s.b
			*s = wbucket{}
		}
	}
	w.head = cur
	return int(((cur % n) + n) % n)
}

func (w *window) add(now int64, a, b int64) {
	s := &w.buckets[w.advance(now)]
	s.a += a
	s.b += b
	w.a += a
	w.b += b
}

func (w *window) reset() {
	clear(w.buckets)
	w.a, w.b = 0, 0
}
