package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// MaxDemands bounds the demands of one decision.
const MaxDemands = 64

// ConcurrencyRetryAfter is the RetryAfter of a denied concurrency demand:
// a slot frees when some request ends, which no store can predict.
const ConcurrencyRetryAfter = time.Second

// Demand is one policy's share of a decision: charge Cost units of Policy
// to Key.
type Demand struct {
	// Policy is the limit charged.
	Policy Policy
	// Key partitions the policy's state (a client IP, an API key, a
	// route). Any string, including "".
	Key string
	// Cost is the number of units a rate demand consumes: 0 checks
	// without consuming. A concurrency demand always takes one slot,
	// whatever its Cost.
	Cost int64
	// Shadow marks a demand that is decided and charged like any other
	// but never denies the decision: a shadow policy that would deny is
	// reported (Result.Allowed false) and not charged.
	Shadow bool
}

// Result is one demand's outcome. It maps onto the RateLimit response
// field (see SetHeaders) and Retry-After.
type Result struct {
	// Allowed reports that the policy alone would admit the demand. The
	// decision admits the request only if every non-shadow demand is
	// Allowed.
	Allowed bool
	// Remaining is the number of units (requests in flight, for a
	// concurrency policy) still available after the decision: after the
	// charge if the demand was charged, else as it stood.
	Remaining int64
	// RetryAfter is, when !Allowed, how long until the demand would be
	// admitted if nothing else were charged meanwhile: for a rate policy
	// exactly the time until enough units have come back, never the full
	// window when less remains; for a calendar quota the time until the
	// period ends; ConcurrencyRetryAfter for a concurrency policy. Zero
	// when Allowed.
	RetryAfter time.Duration
	// ResetAfter is how long until the policy is back at its full burst if
	// nothing else is charged: for a calendar quota, until the period
	// ends. Zero for concurrency policies.
	ResetAfter time.Duration
	// Window is, for a calendar quota, the length of the calendar period
	// the decision fell in (a day may be 23 or 25 hours long, a month 28
	// to 31 days). Zero for the other kinds.
	Window time.Duration
}

// NextAfter returns how long until p, in state r, has at least one more
// unit available than r.Remaining, if nothing else is charged: the t
// parameter of the RateLimit field. For a rate policy that is the time
// until the next unit comes back (at most the emission interval, except
// after a reload to a smaller burst), for a calendar quota the time until
// the period ends; zero when r.Remaining is already the whole burst or
// quota, and for concurrency policies (a slot comes back when some request
// ends, which no store can predict).
func (r Result) NextAfter(p Policy) time.Duration {
	b := p.burst()
	if p.Kind == KindConcurrency || r.Remaining >= b {
		return 0
	}
	if p.Kind == KindCalendar {
		return max(r.ResetAfter, 0)
	}
	iv := p.Interval()
	rem := max(r.Remaining, 0)
	return max(r.ResetAfter-time.Duration(b)*iv+time.Duration(rem+1)*iv, 0)
}

// Ticket is what an admitted decision holds: the concurrency slots that
// Store.Release gives back. The zero Ticket holds nothing.
type Ticket struct {
	// ID identifies the decision in the store (Redis: the member of the
	// in-flight sets). Zero when it holds no slot.
	ID uint64
	// Held has bit i set when demand i took a concurrency slot.
	Held uint64
}

// Holds reports whether t holds any concurrency slot.
func (t Ticket) Holds() bool { return t.Held != 0 }

// Store decides demands. Implementations: Local (in-process) and
// store/redis/redislimit; each passes ratelimittest.Run.
type Store interface {
	// Decide decides all demands atomically, as one decision: the
	// request is admitted iff every non-shadow demand is admitted; if it
	// is, every individually admitted demand is charged (rate demands
	// consume Cost, concurrency demands take a slot), and if it is not,
	// nothing is charged. results must have len(demands); results[i]
	// receives demand i's outcome. now is the decision's time; a store
	// with its own clock (Redis TIME) ignores it.
	//
	// Invalid demands (see CheckDemands) fail with an error wrapping
	// ErrInvalidDemand or ErrInvalidPolicy before any state is touched;
	// any other error is a store failure, and then nothing was charged
	// (or, for an ambiguous network failure, at most this one decision).
	Decide(ctx context.Context, now time.Time, demands []Demand, results []Result) (Ticket, error)

	// Release gives back the concurrency slots t holds; demands are the
	// ones passed to the Decide that returned t. Call it exactly once per
	// ticket that Holds slots, when the request ends.
	Release(ctx context.Context, demands []Demand, t Ticket) error

	// Features declares what the store offers beyond these methods; the
	// middleware and ratelimittest read it (never a type assertion).
	Features() Features
}

// Features declares a Store's capabilities. The zero value is a networked
// store on its own clock (Redis): the middleware bounds its calls with
// Timeout, MaxWait and the Breaker.
type Features struct {
	// InProcess reports that decisions never wait on I/O (Local): the
	// middleware calls the store directly, without a timeout, the breaker
	// or a goroutine.
	InProcess bool
	// CallerClock reports that decisions use the time passed to Decide
	// (Local), not the store's own clock (Redis TIME): ratelimittest then
	// drives it with a fake clock.
	CallerClock bool
}

// ErrInvalidDemand is wrapped by errors for demands a store refuses
// before deciding: too many, duplicates, a cost above the burst, a results
// slice of the wrong length.
var ErrInvalidDemand = errors.New("ratelimit: invalid demand")

// ErrCostExceedsBurst is wrapped (with ErrInvalidDemand) when a rate
// demand costs more than its policy's burst: no wait would admit it.
var ErrCostExceedsBurst = errors.New("ratelimit: cost exceeds burst")

type demandError struct {
	msg string
	is  error
}

func (e *demandError) Error() string { return "ratelimit: " + e.msg }

func (e *demandError) Is(target error) bool {
	return target == ErrInvalidDemand || (e.is != nil && target == e.is)
}

// CheckDemands returns an error if demands cannot be decided: results of
// the wrong length, none or more than MaxDemands demands, an invalid
// policy, a negative cost or one above a rate policy's burst, or two
// demands on the same policy name, kind and key (they would share one
// state). Stores call it first.
func CheckDemands(demands []Demand, results []Result) error {
	if len(results) != len(demands) {
		return &demandError{msg: fmt.Sprintf("%d results for %d demands", len(results), len(demands))}
	}
	if len(demands) == 0 || len(demands) > MaxDemands {
		return &demandError{msg: fmt.Sprintf("%d demands; want 1 to %d", len(demands), MaxDemands)}
	}
	for i := range demands {
		d := &demands[i]
		if err := d.Policy.Validate(); err != nil {
			return err
		}
		if d.Cost < 0 {
			return &demandError{msg: fmt.Sprintf("policy %q: negative cost %d", d.Policy.Name, d.Cost)}
		}
		if d.Policy.Kind != KindConcurrency && d.Cost > d.Policy.burst() {
			return &demandError{is: ErrCostExceedsBurst,
				msg: fmt.Sprintf("policy %q: cost %d exceeds the burst of %d", d.Policy.Name, d.Cost, d.Policy.burst())}
		}
		for j := 0; j < i; j++ {
			if e := &demands[j]; e.Policy.Name == d.Policy.Name && e.Policy.Kind == d.Policy.Kind && e.Key == d.Key {
				return &demandError{msg: fmt.Sprintf("policy %q appears twice for the same key", d.Policy.Name)}
			}
		}
	}
	return nil
}

// Admitted reports whether a decision with these results admits the
// request: every non-shadow demand is Allowed.
func Admitted(demands []Demand, results []Result) bool {
	for i := range demands {
		if !demands[i].Shadow && !results[i].Allowed {
			return false
		}
	}
	return true
}

// ErrLimited is matched (errors.Is) by every *LimitedError.
var ErrLimited = errors.New("ratelimit: limited")

// LimitedError reports a denied decision, for callers outside HTTP.
type LimitedError struct {
	// Policies are the names of the violated (non-shadow) policies.
	Policies []string
	// RetryAfter is the longest RetryAfter among them: waiting that long
	// satisfies every one of them, if nothing else is charged meanwhile.
	RetryAfter time.Duration
}

// Error reads like "ratelimit: limited by policy "per-ip"; retry after 1.5s".
func (e *LimitedError) Error() string {
	return "ratelimit: limited by " + plural(len(e.Policies), "policy ", "policies ") + quoteList(e.Policies) +
		"; retry after " + e.RetryAfter.String()
}

// Is matches ErrLimited.
func (e *LimitedError) Is(target error) bool { return target == ErrLimited }

// Check returns nil if the decision admitted the request, else a
// *LimitedError naming the violated policies.
func Check(demands []Demand, results []Result) error {
	if Admitted(demands, results) {
		return nil
	}
	e := &LimitedError{}
	for i := range demands {
		if !demands[i].Shadow && !results[i].Allowed {
			e.Policies = append(e.Policies, demands[i].Policy.Name)
			e.RetryAfter = max(e.RetryAfter, results[i].RetryAfter)
		}
	}
	return e
}
