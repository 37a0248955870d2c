package recentkeys

import (
	"strconv"
	"sync"
	"testing"
)

func TestHasWhatWasAdded(t *testing.T) {
	s := New()
	if s.Has("a") {
		t.Fatal("an empty set has a key")
	}
	s.Add("a")
	s.Add("a")
	if !s.Has("a") || s.Has("b") {
		t.Fatalf("after Add(a): Has(a)=%v Has(b)=%v, want true false", s.Has("a"), s.Has("b"))
	}
}

// TestBounded: the table never grows, and keys added long ago are
// forgotten while the latest are kept.
func TestBounded(t *testing.T) {
	s := New()
	const n = 4 * Cap
	for i := range n {
		s.Add(strconv.Itoa(i))
	}
	early, late := 0, 0
	for i := range Cap {
		if s.Has(strconv.Itoa(i)) {
			early++
		}
		if s.Has(strconv.Itoa(n - 1 - i)) {
			late++
		}
	}
	// A slot keeps a key with probability about e^-(later keys / Cap): for
	// the first Cap keys e^-3 to e^-4 (about 3% on average), for the last
	// e^-1 to 1 (on average 1 - e^-1, 63%).
	if early > Cap/10 || late < Cap*55/100 {
		t.Fatalf("after %d keys: %d of the first %d kept (want under 10%%), %d of the last %d (want over 55%%)", n, early, Cap, late, Cap)
	}
	if !s.Has(strconv.Itoa(n - 1)) {
		t.Fatal("the last key added is not kept")
	}
}

func TestConcurrent(t *testing.T) {
	s := New()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				k := strconv.Itoa(g*1000 + i)
				s.Add(k)
				_ = s.Has(k)
			}
		}()
	}
	wg.Wait()
	// 8,000 keys in 65,536 slots lose about 500 to collisions.
	kept := 0
	for i := range 8000 {
		if s.Has(strconv.Itoa(i)) {
			kept++
		}
	}
	if kept < 7000 {
		t.Fatalf("%d of 8000 keys added concurrently kept, want over 7000", kept)
	}
}
