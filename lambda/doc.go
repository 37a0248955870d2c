// Package lambda runs levee's idempotency (and any other net/http
// middleware, such as ratelimit.Middleware) inside AWS Lambda, on
// github.com/aws/aws-lambda-go.
//
// Three entry points, all on the same idempotency.Engine and Store as the
// gateway:
//
//   - NewHTTPHandler serves HTTP-shaped events — API Gateway REST (v1),
//     HTTP API (v2), ALB and Function URL — by converting each event to an
//     *http.Request (github.com/awslabs/aws-lambda-go-api-proxy) and
//     running idempotency.Engine.Middleware in front of a net/http
//     handler: the key header, fingerprint, 400/409/422, replay with
//     Idempotent-Replayed and problem+json are the gateway's, from the
//     same code;
//   - NewIdempotentHandler wraps any typed handler func(ctx, In) (Out, error) and
//     keys it by a JMESPath expression over the event (Powertools'
//     event_key_jmespath), with an optional payload-validation path; a
//     duplicate gets the stored Out without running the handler;
//   - NewSQSHandler, NewKinesisHandler and NewDynamoDBHandler run a batch
//     record by record, each under its own key, and answer a partial batch
//     response listing exactly the records that failed.
//
// # The invocation deadline
//
// A claim never outlives the invocation that holds it: the lease of every
// claim ends at the invocation's deadline (the ctx deadline the Lambda
// runtime sets; Options.Lease and RenewEvery apply only to a ctx without
// one). Shortly before the deadline (Config.DeadlineMargin), a handler
// that is still running is given up on: the invocation cannot tell
// whether its work took effect, so the key is held in
// idempotency.StateUnknown (the idempotency package's unknown-outcome
// rule) and the invocation answers at once — 504 upstream-timeout over
// HTTP, an error matching ErrDeadline (and idempotency.ErrOutcomeUnknown)
// otherwise, a failed item in a batch. Its retry is answered 409
// idempotency-outcome-unknown (or idempotency.ErrOutcomeUnknown) and is
// not run again until an operator resolves the key
// (idempotency.Engine.Resolve, levee keys resolve) or its retention ends.
// A process that dies without reaching the margin (out of memory) leaves
// an in-progress claim that lapses at the deadline, after which a retry
// runs again, as a crashed gateway's claim does after its lease.
//
// The handler's ctx ends at that margin, so a handler that watches it can
// stop before its work is cut off.
//
// # Cost
//
// A new request costs two store round trips (claim, complete), a replay
// one — the same as the gateway; see docs/benchmarks.md.
package lambda
