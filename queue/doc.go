// Package queue delivers messages durably: Enqueue returns once the message
// is committed to a Backend, and Workers deliver it to a Handler with
// retries until it succeeds or, after the last attempt, moves to a
// dead-letter queue (DLQ) that keeps the payload, headers, target and the
// error of every attempt. Operators list, inspect, replay and purge the DLQ
// through the same Queue.
//
// # Delivery
//
// A Worker claims messages under a visibility lease (WorkerConfig.Lease):
// a claimed message is invisible to other workers until it is acknowledged,
// released or the lease ends, so a message whose worker died is redelivered
// by another one after the lease (at-least-once delivery; see Idempotent
// for processing once). Each attempt runs with a timeout; a failed one is
// retried after a capped exponential backoff with full jitter (uniform in
// [0, min(BackoffMax, BackoffBase·2^(n−1))]) or after the delay the
// handler asked for (RetryAfter, HTTPError.RetryAfter; capped by
// MaxRetryAfter). A message waiting for its retry is simply not available
// yet: it never blocks other messages. Scheduling is fair per target: a
// worker runs at most MaxPerTarget deliveries to one target, so a target
// that hangs or fails holds at most that many slots and every other
// target's messages keep flowing. A handler returning ErrTargetGone (or an
// HTTPError with status 410) dead-letters its message and disables the
// target: its other messages wait, undelivered and not lost, until
// EnableTarget.
//
// # Durability
//
// All state lives in the Backend: a process may be killed at any moment
// and nothing accepted is lost; a message being delivered at that moment is
// delivered again after its lease, with the lost attempt recorded in its
// history. Backends: store/sqlite/sqlitequeue (the embedded default) and
// store/postgres/pgqueue; every backend passes the shared suite in
// queue/queuetest.
//
// # The dead-letter queue
//
// A message goes to the DLQ after MaxAttempts failed attempts, at once when
// the handler returned a Permanent error or ErrTargetGone. It keeps
// every attempt's error (with HTTP status and the first MaxBodyBytes of the
// body for an *HTTPError), the attempt count, and its first and last
// failure times. Replay moves dead messages back, oldest first, rate
// limited, with attempts reset and the original message id kept.
package queue
