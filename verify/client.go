package verify

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/leveehq/levee/resilience"
)

// maxBody bounds how much of each response is read.
const maxBody = 4 << 20

// exchange is one request and what came back.
type exchange struct {
	Status int
	Header http.Header
	Body   []byte
	Err    error
	At     time.Time // when the response headers arrived
}

func (e exchange) String() string {
	if e.Err != nil {
		return "error: " + e.Err.Error()
	}
	return strconv.Itoa(e.Status)
}

func (e exchange) ok() bool { return e.Err == nil && e.Status >= 200 && e.Status < 300 }

type sender struct {
	client  *http.Client
	header  http.Header
	timeout time.Duration
	now     func() time.Time
}

// send issues one request. keys: nil sends no key field; each element is
// sent as its own field line (two elements: the field sent twice). over
// replaces or adds headers after the common ones.
func (s *sender) send(ctx context.Context, method, url string, body []byte, keyHeader string, keys []string, over http.Header) exchange {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return exchange{Err: fmt.Errorf("verify: build request: %w", err)}
	}
	for k, v := range s.header {
		req.Header[k] = append([]string(nil), v...)
	}
	for k, v := range over {
		req.Header[http.CanonicalHeaderKey(k)] = append([]string(nil), v...)
	}
	if keys != nil {
		req.Header[http.CanonicalHeaderKey(keyHeader)] = keys
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return exchange{Err: err}
	}
	defer resp.Body.Close()
	at := s.now()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return exchange{Status: resp.StatusCode, Header: resp.Header, Err: fmt.Errorf("read body: %w", err), At: at}
	}
	return exchange{Status: resp.StatusCode, Header: resp.Header, Body: b, At: at}
}

// newKey returns a fresh random idempotency key naming the case.
func newKey(name string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "levee-verify-" + name + "-" + hex.EncodeToString(b[:])
}

// otherBody returns a body that differs from b: a JSON object gains a
// member, anything else gains a suffix.
func otherBody(b []byte) []byte {
	var m map[string]any
	if json.Unmarshal(b, &m) == nil && m != nil {
		m["levee_verify_other"] = newKey("body")
		out, err := json.Marshal(m)
		if err == nil {
			return out
		}
	}
	return append(append([]byte(nil), b...), []byte(" levee-verify-other")...)
}

// snippet shortens a body for evidence, control characters blanked.
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// parseRetryAfter parses a Retry-After value (delay-seconds or an
// HTTP-date, RFC 9110 §10.2.3) relative to now: the same parser levee's
// own clients use, so what verify accepts is what they honour.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	return resilience.ParseRetryAfter(v, now)
}
