// Package ratelimit limits how fast and how concurrently clients may call
// an API, by policies such as "100/s burst 200", "5000/day" and
// "concurrency 50", each keyed by client IP, API key, route or a constant.
//
// # Algorithm
//
// Rate policies use GCRA, the generic cell rate algorithm, which keeps one
// number per key: the theoretical arrival time (TAT). With emission
// interval I = Period/Limit and burst tolerance tau = I·Burst, a demand of
// n units at time now is admitted when max(TAT, now) + I·n − tau ≤ now,
// and admitting it sets TAT = max(TAT, now) + I·n. In any interval of
// length L the units admitted are at most Burst + L/I, and a denied
// demand learns exactly when it would be admitted (Result.RetryAfter).
// Quotas are rate policies with Burst = Limit: "1000/hour" admits 1000 at
// once and then one every 3.6 s, a sliding allowance with no window
// boundary to double-spend across. Time is an argument everywhere
// (Local.AllowN takes now; Store.Decide takes now), so the arithmetic is
// deterministic under test; the Redis store uses the Redis server's TIME
// instead, so replicas with skewed clocks agree.
//
// Calendar quotas ("10000/month", "500/week", "100/day calendar") count
// units from zero in each calendar period of a time zone (Policy.Location)
// and reset exactly at its boundary, across DST changes.
//
// Concurrency policies count requests in flight; a slot is taken at
// admission and given back by Store.Release when the request ends (the
// middleware does it when the handler returns or panics).
//
// State is keyed by policy name and key, never by the numbers, so a
// reload that changes a policy's numbers keeps its state: tightening
// 100/s to 10/s mid-window takes effect at once, without a free reset.
//
// # Decisions
//
// A request's demands (one per applicable policy) are decided together by
// Store.Decide: atomically, and charged all or none: a request denied by
// any policy charges no policy. Shadow demands are decided and reported
// but never deny. Local (in-process, sharded, allocation-free for
// Local.AllowN) and store/redis/redislimit (one Lua script, one round trip per
// decision whatever the number of policies) implement Store; both pass
// the shared suite in ratelimittest.
//
// # HTTP
//
// Middleware applies Rules to requests: 429 with Retry-After and an
// application/problem+json body naming the violated policies, the
// RateLimit-Policy and RateLimit fields of
// draft-ietf-httpapi-ratelimit-headers on every decided response, and a
// per-rule choice between failing open (to an in-process fallback limit,
// by default the policy divided among Options.Replicas) and failing
// closed (503) when the store is down. A Breaker tells a slow store (waited
// for, up to Options.MaxWait) from a dead one (silent for Options.Timeout,
// refusing connections): only the latter sends requests to the failure
// modes. OnDecision reports every decision for metrics. docs/ratelimit.md
// has the details.
//
// # Concurrency
//
// Local, the Redis store and the middleware are safe for concurrent use.
// No package-level state is mutable.
package ratelimit
