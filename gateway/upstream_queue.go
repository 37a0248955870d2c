package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/leveehq/levee/internal/config"
	"github.com/leveehq/levee/resilience"
)

// QueuedHeader marks a response of an upstream's queue fallback: the
// write was not delivered yet, it was stored for later delivery; its
// value is "true". The body is the queue's 202 answer ({"id", "queue",
// "status": "queued"}) and Location, when the queue has a path, its
// status.
const QueuedHeader = "Levee-Queued"

// validateFallbackQueues checks every upstream's fallback.queue names a
// queue of queues: whose target is that upstream.
func (c *Config) validateFallbackQueues(r *config.Report) {
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.Fallback == nil || u.Fallback.Queue == "" {
			continue
		}
		field := fmt.Sprintf("upstreams[%d].fallback.queue", i)
		var q *QueueConfig
		names := make([]string, 0, len(c.Queues))
		for j := range c.Queues {
			names = append(names, c.Queues[j].Name)
			if c.Queues[j].Name == u.Fallback.Queue {
				q = &c.Queues[j]
			}
		}
		switch {
		case q == nil && len(names) == 0:
			r.Bad(field, "unknown queue %q (no queues: configured; add one whose target is %q)", u.Fallback.Queue, u.Name)
		case q == nil:
			r.Bad(field, "unknown queue %q (queues: %s)", u.Fallback.Queue, strings.Join(names, ", "))
		case q.upstreamRef != u.Name:
			r.Bad(field, "queue %q delivers to %q, not to upstream %q: set its target to %q (optionally followed by a path)", q.Name, q.Target, u.Name, u.Name)
		}
	}
}

// queueFallback is an upstream's `fallback: {queue: NAME}` on one
// route: an unsafe request whose call failed where the write did not
// happen upstream is stored in the queue and answered 202 (see
// UpstreamFallback.Queue for the rule, docs/decisions.md for why).
type queueFallback struct {
	gq        *gwQueue
	upstream  string
	base      string // the upstream URL's path, without a trailing slash
	keyHeader string // canonical
	dedupes   bool   // the upstream deduplicates by keyHeader (proxyUpstream.passKey)
	obs       resilience.Observer
}

// queueableMethod reports the methods the queue fallback accepts.
func queueableMethod(m string) bool {
	return m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch || m == http.MethodDelete
}

// queueReason says whether the final outcome of a call (resp or err)
// lets the request be accepted for later delivery, and why: "" when not.
// sent: some attempt reached the upstream whole (it was answered, or its
// answer was lost); keyed: the request carries an idempotency key the
// upstream deduplicates.
//
//   - An error (a local rejection, a connect error, a timeout...) is a
//     failure; the client's own body failing is not (nothing to store).
//   - An answer of 408, 425, 429, 502, 503 or 504 (after the retries) is
//     a failure; every other answer, 500 included, is the upstream's
//     answer and goes to the client.
//   - A failure is queued when nothing was sent (the write certainly did
//     not happen), or when the request is keyed (a second delivery is
//     deduplicated by the upstream). A sent, keyless write is not: the
//     upstream may have done it, and doing it twice is worse than the
//     client seeing the error.
func queueReason(resp *http.Response, err error, sent, keyed bool) string {
	switch {
	case err != nil:
		var cbe *clientBodyError
		var mbe *http.MaxBytesError
		if errors.As(err, &cbe) || errors.As(err, &mbe) {
			return ""
		}
	case resp == nil:
		return ""
	case !queueStatus(resp.StatusCode):
		return ""
	}
	switch {
	case !sent:
		return "not_sent"
	case keyed:
		return "keyed"
	}
	return ""
}

// accept stores the request (method, path and query relative to the
// upstream's URL, body, the queue's headers and the idempotency key)
// when queueReason allows, and returns the 202 answering it instead of
// the call's outcome, true. When it does not apply, or the enqueue
// fails, it returns false: the caller answers the original outcome
// (resp is then untouched).
func (qf *queueFallback) accept(ctx context.Context, ri *reqInfo, method string, h http.Header, path, query string, body []byte,
	resp *http.Response, err error, sent bool) (*http.Response, bool) {
	if !queueableMethod(method) {
		return nil, false
	}
	keyed := qf.dedupes && h.Get(qf.keyHeader) != ""
	why := queueReason(resp, err, sent, keyed)
	if why == "" {
		return nil, false
	}
	target := qf.upstream + "/" + strings.TrimPrefix(path, "/")
	if query != "" {
		target += "?" + query
	}
	id, qerr := qf.gq.enqueue(ctx, h, body, target, method, "fallback", qf.keyHeader)
	if qerr != nil {
		return nil, false // the client gets the original error, never a silent success
	}
	cause := ""
	if err != nil {
		cause = err.Error()
	} else {
		cause = resp.Status
		drain(resp)
	}
	if ri != nil {
		ri.upstreamErr = "queued as " + id + " in " + qf.gq.cfg.Name + ": " + cause
	}
	if qf.obs != nil {
		qf.obs.Event(ctx, resilience.Event{Kind: resilience.EventQueued, Upstream: qf.upstream, Reason: why})
	}
	rh := http.Header{}
	b := qf.gq.accepted(rh, id)
	rh.Set(QueuedHeader, "true")
	return &http.Response{Status: "202 Accepted", StatusCode: http.StatusAccepted, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: rh, Body: io.NopCloser(bytes.NewReader(b)), ContentLength: int64(len(b))}, true
}

// drain discards the start of resp's body, so its connection can be
// reused, and closes it.
func drain(resp *http.Response) {
	if resp == nil || resp.Body == nil {
		return
	}
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	_ = resp.Body.Close()
}

// queueTransport is the ReverseProxy path's queue fallback, between
// timedTransport and hideKey: it reads an unsafe request's body into
// memory (so it can be stored; it also makes it replayable) and, when
// the call fails where accept allows, answers the queue's 202 instead.
type queueTransport struct {
	rt http.RoundTripper
	qf *queueFallback
}

func (t queueTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !queueableMethod(r.Method) {
		return t.rt.RoundTrip(r)
	}
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			return nil, err // timedTransport tells the client's body failing
		}
		body = b
		r2 := *r
		r2.Body = io.NopCloser(bytes.NewReader(b))
		r2.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		r = &r2
	}
	resp, err := t.rt.RoundTrip(r)
	if resp != nil && err == nil && !queueStatus(resp.StatusCode) {
		return resp, nil
	}
	ri := infoFrom(r.Context())
	sent := true // unknown: assume the worst
	if ri != nil && ri.sent != nil {
		sent = ri.sent.wrote.Load() || ri.sent.answered.Load()
	}
	path := strings.TrimPrefix(r.URL.Path, t.qf.base) // SetURL joined the upstream's path and the request's
	if qr, ok := t.qf.accept(r.Context(), ri, r.Method, r.Header, path, r.URL.RawQuery, body, resp, err, sent); ok {
		return qr, nil
	}
	return resp, err
}

// queueStatus reports the statuses queueReason counts as failures.
func queueStatus(s int) bool {
	switch s {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}
