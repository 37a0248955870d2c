package ratelimit

import "time"

// Calendar quotas count units from zero in each calendar period
// (Policy.Window): a demand of n units is admitted when the units already
// charged in the period plus n are at most Limit, and a denied demand
// waits until the period ends. The state of a key is the end of the
// period it was charged in and the units charged; a state whose period
// has ended is "full" and may be forgotten, like a passed GCRA TAT.

// calendarSalt separates the in-process state of a calendar policy from a
// rate policy of the same name and key (a reload that changes the kind
// must not read one as the other).
const calendarSalt = 0x9e3779b97f4a7c15

// calendarStep decides a demand of cost units of calendar policy p at now
// (Unix ns) against st (tat = period end in Unix ns, iv = units charged).
// The returned state is what to store if the demand is charged.
func calendarStep(now int64, p Policy, st tatState, cost int64) (gcraStep, tatState) {
	start, end := p.Window(time.Unix(0, now))
	e := end.UnixNano()
	used := int64(0)
	if st.tat == e {
		used = st.iv
	}
	s := gcraStep{newTAT: e, resetKept: e - now, resetCharged: e - now, window: e - start.UnixNano()}
	s.remKept = max(p.Limit-used, 0)
	if used+cost <= p.Limit {
		s.allowed = true
		s.remCharged = p.Limit - used - cost
		return s, tatState{tat: e, iv: used + cost}
	}
	s.retry = e - now
	return s, st
}
