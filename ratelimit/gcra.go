package ratelimit

import "math"

// GCRA (the generic cell rate algorithm) keeps one number per key: the
// theoretical arrival time (TAT), the moment at which the key would be
// back to a full burst if nothing else arrived. With emission interval I
// (Period/Limit) and burst tolerance tau = I·Burst, a demand of n units at
// time now is admitted when
//
//	max(TAT, now) + I·n − tau ≤ now
//
// and admitting it sets TAT = max(TAT, now) + I·n. A TAT at or before now
// means "full"; a key whose TAT has passed can be forgotten without
// changing any decision, which is how idle keys are reclaimed.
//
// For any interval of length L, the units admitted are at most
// Burst + L/I: each admission moves TAT forward by I per unit and must
// leave it within tau of its own time.
//
// The arithmetic is integer-only, in one time unit throughout: nanoseconds
// in the in-process Local, microseconds in the Redis script (which mirrors
// this function line for line).

// rescale converts a stored TAT charged at emission interval from into
// one at interval to, keeping the units owed: (tat-now)/from units become
// (tat-now)/from·to of time. A reload that changes a policy's rate thus
// carries over what was spent, counted in requests — lowering 100/hour to
// 10/hour after 50 requests denies at once, and raising it keeps the 50
// counted — instead of converting a time debt that would hand out part
// of a fresh burst. Rounded up, so it never grants more than was owed.
func rescale(now, tat, from, to int64) int64 {
	if from <= 0 || to <= 0 || from == to || tat <= now {
		return tat
	}
	d := math.Ceil(float64(tat-now) / float64(from) * float64(to))
	if d > 1<<62 {
		d = 1 << 62
	}
	return now + int64(d)
}

// gcraStep is one decision for one key.
type gcraStep struct {
	allowed bool
	// newTAT is the TAT to store if the demand is charged.
	newTAT int64
	// retry is, when !allowed, how long until the demand would be
	// admitted (if nothing else is charged meanwhile).
	retry int64
	// remaining and reset after the decision, if charged and if not.
	remCharged, remKept     int64
	resetCharged, resetKept int64
	// window is the calendar period's length (calendar quotas only).
	window int64
}

// gcra decides a demand of cost units at now against a stored tat (0 or
// any value ≤ now for "no state"), with emission interval iv > 0 and burst
// tolerance tau = iv·burst. It does not check cost against the burst.
func gcra(now, tat, iv, tau, cost int64) gcraStep {
	if tat < now {
		tat = now
	}
	s := gcraStep{newTAT: tat + iv*cost, resetKept: tat - now}
	allowAt := s.newTAT - tau
	if allowAt <= now {
		s.allowed = true
		s.remCharged = (now - allowAt) / iv
		s.remKept = s.remCharged + cost
		s.resetCharged = s.newTAT - now
		return s
	}
	s.retry = allowAt - now
	if k := now + tau - tat; k > 0 { // negative after a reload to a smaller burst
		s.remKept = k / iv
	}
	return s
}
