package gateway

import (
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// accessRecord is one access-log line's fields.
type accessRecord struct {
	time        time.Time
	requestID   string
	route       string
	method      string
	path        string
	status      int
	duration    time.Duration
	upstreamDur time.Duration
	bytes       int64
	idempotency string
	remote      string
	upstreamErr string
	limitedBy   string
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// writeAccessLine encodes rec as one JSON line — the fields, names and
// formats slog's JSONHandler gives the same record — and writes it to w in
// one call. It exists because slog's generic encoding was 8% of a proxied
// request's CPU (docs/benchmarks.md).
func writeAccessLine(w io.Writer, rec *accessRecord) {
	bp := linePool.Get().(*[]byte)
	b := (*bp)[:0]
	b = append(b, `{"time":"`...)
	b = rec.time.AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","level":"INFO","msg":"request","request_id":`...)
	b = appendJSONString(b, rec.requestID)
	b = append(b, `,"route":`...)
	b = appendJSONString(b, rec.route)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, rec.method)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, rec.path)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(rec.status), 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, float64(rec.duration.Microseconds())/1000, 'g', -1, 64)
	b = append(b, `,"upstream_ms":`...)
	b = strconv.AppendFloat(b, float64(rec.upstreamDur.Microseconds())/1000, 'g', -1, 64)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, rec.bytes, 10)
	b = append(b, `,"idempotency":`...)
	b = appendJSONString(b, rec.idempotency)
	b = append(b, `,"remote":`...)
	b = appendJSONString(b, rec.remote)
	if rec.upstreamErr != "" {
		b = append(b, `,"upstream_error":`...)
		b = appendJSONString(b, rec.upstreamErr)
	}
	if rec.limitedBy != "" {
		b = append(b, `,"rate_limited_by":`...)
		b = appendJSONString(b, rec.limitedBy)
	}
	b = append(b, "}\n"...)
	_, _ = w.Write(b)
	if cap(b) <= 64<<10 {
		*bp = b
		linePool.Put(bp)
	}
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD, as slog
// does.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			if r == utf8.RuneError {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, `\u202`...)
				b = append(b, hexDigits[r&0xf])
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
