// Package idempotency makes retried mutating requests take effect once.
//
// An Engine sits on a Store (store/memory, store/sqlite, store/redis,
// store/postgres, store/dynamodb) and offers two entry points:
//
//   - Engine.Middleware wraps a net/http handler with the Idempotency-Key
//     contract of draft-ietf-httpapi-idempotency-key-header, as documented
//     in docs/idempotency.md;
//   - Engine.Do runs a plain function at most once per key, for queue
//     consumers and jobs.
//
// The protocol: the first request atomically claims its scoped key with a
// lease and a random fencing token (one winner across all replicas
// sharing the store); while the handler runs the lease is renewed; on
// completion the response is stored only if the token still holds the
// claim, so a holder that lost its lease can never overwrite a newer
// record. Duplicates get the stored response byte for byte, or 409 while
// the first is in flight, or 422 if the request differs. Failures (5xx,
// panics) release the claim so a retry executes again. An unknown outcome
// — the request reached the upstream and its answer was lost, reported
// with ReportUnknownOutcome or UnknownOutcome — holds the key in
// StateUnknown instead: retries are refused (ErrOutcomeUnknown, HTTP 409
// idempotency-outcome-unknown) until an operator resolves the key or its
// retention ends. Retention is checked logically on every read.
//
// Cost: a new request is two store round trips (claim, complete), a
// replay one (SQLite: a read and two write transactions, which concurrent
// requests share; see store/sqlite). Replicas must keep their clocks
// within a small fraction of Options.Lease of each other (NTP suffices for
// the 30 s default).
package idempotency
