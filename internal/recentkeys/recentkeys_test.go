package recentkeys

import (
	"strconv"
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
	if len(s.ring) != 1 {
		t.Fatalf("adding a key twice holds %d entries, want 1", len(s.ring))
	}
}

func TestEvictsOldestWhenFull(t *testing.T) {
	s := New()
	for i := range Cap + 10 {
		s.Add(strconv.Itoa(i))
	}
	if len(s.set) != Cap || len(s.ring) != Cap {
		t.Fatalf("holds %d keys (%d in the ring), want the cap %d", len(s.set), len(s.ring), Cap)
	}
	for i := range 10 {
		if s.Has(strconv.Itoa(i)) {
			t.Fatalf("key %d, among the 10 oldest, was not evicted", i)
		}
	}
	for _, i := range []int{10, Cap / 2, Cap + 9} {
		if !s.Has(strconv.Itoa(i)) {
			t.Fatalf("key %d was evicted, only the 10 oldest should be", i)
		}
	}
}
