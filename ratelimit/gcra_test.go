package ratelimit

import "testing"

// Table tests of the arithmetic, in abstract time units: interval 10,
// burst 3 (tau 30) unless stated.
func TestGCRA(t *testing.T) {
	cases := []struct {
		name                 string
		now, tat, iv, tau, n int64
		want                 gcraStep
	}{
		{"fresh key", 100, 0, 10, 30, 1,
			gcraStep{allowed: true, newTAT: 110, remCharged: 2, remKept: 3, resetCharged: 10}},
		{"stale tat counts as now", 100, 50, 10, 30, 1,
			gcraStep{allowed: true, newTAT: 110, remCharged: 2, remKept: 3, resetCharged: 10}},
		{"second of burst", 100, 110, 10, 30, 1,
			gcraStep{allowed: true, newTAT: 120, remCharged: 1, remKept: 2, resetCharged: 20, resetKept: 10}},
		{"last of burst", 100, 120, 10, 30, 1,
			gcraStep{allowed: true, newTAT: 130, remCharged: 0, remKept: 1, resetCharged: 30, resetKept: 20}},
		{"burst spent: wait one interval", 100, 130, 10, 30, 1,
			gcraStep{newTAT: 140, retry: 10, remKept: 0, resetKept: 30}},
		{"part of an interval later", 104, 130, 10, 30, 1,
			gcraStep{newTAT: 140, retry: 6, remKept: 0, resetKept: 26}},
		{"exactly at the allow time", 110, 130, 10, 30, 1,
			gcraStep{allowed: true, newTAT: 140, remCharged: 0, remKept: 1, resetCharged: 30, resetKept: 20}},
		{"whole burst at once", 100, 0, 10, 30, 3,
			gcraStep{allowed: true, newTAT: 130, remCharged: 0, remKept: 3, resetCharged: 30}},
		{"cost 2 with 1 left waits one interval", 100, 120, 10, 30, 2,
			gcraStep{newTAT: 140, retry: 10, remKept: 1, resetKept: 20}},
		{"cost 0 on a full key", 100, 0, 10, 30, 0,
			gcraStep{allowed: true, newTAT: 100, remCharged: 3, remKept: 3}},
		{"cost 0 on an empty key", 100, 130, 10, 30, 0,
			gcraStep{allowed: true, newTAT: 130, remCharged: 0, remKept: 0, resetCharged: 30, resetKept: 30}},
		{"remaining rounds down", 105, 120, 10, 30, 1,
			gcraStep{allowed: true, newTAT: 130, remCharged: 0, remKept: 1, resetCharged: 25, resetKept: 15}},
		{"tat beyond tau after a reload to a smaller burst", 100, 200, 10, 30, 1,
			gcraStep{newTAT: 210, retry: 80, remKept: 0, resetKept: 100}},
		{"burst 1 is a strict rate", 100, 105, 10, 10, 1,
			gcraStep{newTAT: 115, retry: 5, resetKept: 5}},
		{"negative times work too", -100, -200, 10, 30, 1,
			gcraStep{allowed: true, newTAT: -90, remCharged: 2, remKept: 3, resetCharged: 10}},
	}
	for _, c := range cases {
		if got := gcra(c.now, c.tat, c.iv, c.tau, c.n); got != c.want {
			t.Errorf("%s: gcra(now=%d, tat=%d, iv=%d, tau=%d, n=%d)\n got %+v\nwant %+v", c.name, c.now, c.tat, c.iv, c.tau, c.n, got, c.want)
		}
	}
}

func TestIntervalRoundsUpToMicroseconds(t *testing.T) {
	cases := []struct {
		spec string
		want int64 // µs
	}{
		{"100/s", 10_000}, {"3/s", 333_334}, {"1000000/s", 1}, {"1/d", 86_400_000_000},
		{"7/m", 8_571_429}, {"5000/day", 17_280_000},
	}
	for _, c := range cases {
		p, err := ParsePolicy(c.spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.intervalMicros(); got != c.want {
			t.Errorf("%s: interval %dµs, want %dµs", c.spec, got, c.want)
		}
	}
}
