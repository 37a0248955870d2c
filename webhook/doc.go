// Package webhook verifies signed webhooks from third parties and hands the
// verified events to a durable sink, answering the sender only once the sink
// accepted the event.
//
// A [Scheme] checks one provider's signature over the raw body:
// [StandardWebhooks] (webhook-id, webhook-timestamp, webhook-signature),
// [Stripe] (Stripe-Signature), [GitHub] (X-Hub-Signature-256), [Shopify]
// (X-Shopify-Hmac-Sha256), [Slack] (X-Slack-Signature) and [HMAC], a generic
// HMAC-SHA256 in a named header. Every scheme holds several secrets so a
// secret can be rotated without downtime, compares signatures in constant
// time (hmac.Equal), and, where the provider signs a timestamp, rejects
// timestamps outside a tolerance in both directions (stale replays and
// timestamps from the future); the current time is an argument of Verify, so
// the tolerance arithmetic has deterministic tests. Every scheme can also
// Sign, for tests and for levee's own outbound webhooks.
//
// [Handler] is the net/http ingest adapter: a bounded body read, Verify, the
// event id (the scheme's id header or a dotted JSON path into the body), an
// optional [Dedupe] step, and [Sink.Accept]. It answers 202 only after the
// sink accepted the event durably; every failure is an RFC 9457
// application/problem+json document with one of levee's stable types (see
// docs/webhooks.md). A sink failure never marks an event as seen.
//
// Errors are typed: compare with errors.Is against [ErrMissingHeader],
// [ErrMalformedHeader], [ErrBadSignature], [ErrStaleTimestamp],
// [ErrFutureTimestamp], [ErrBodyTooLarge], [ErrMalformedJSON] and
// [ErrMissingID], or use errors.As with [*HeaderError], [*TimestampError]
// and [*BodyTooLargeError] for the details. No error message contains a
// secret, an expected signature or a received signature.
//
// All types in this package are safe for concurrent use once constructed.
package webhook
