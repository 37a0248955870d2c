package idempotency

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"sort"
)

// codecVersion is the first byte of every encoded Response.
const codecVersion = 1

const flagBodyOmitted = 1

// errCorrupt is wrapped by UnmarshalResponse for malformed input.
var errCorrupt = errors.New("idempotency: corrupt stored response")

// MarshalResponse encodes r in levee's compact binary form, the one format
// every store uses for the response column/attribute/field. Header names
// are written in sorted order so equal responses encode to equal bytes.
func MarshalResponse(r Response) []byte {
	size := 16 + len(r.Body)
	for k, vs := range r.Header {
		size += len(k) + 4
		for _, v := range vs {
			size += len(v) + 4
		}
	}
	b := make([]byte, 0, size)
	b = append(b, codecVersion)
	var flags byte
	if r.BodyOmitted {
		flags |= flagBodyOmitted
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(r.Status))
	b = binary.AppendUvarint(b, uint64(len(r.Header)))
	if len(r.Header) > 0 {
		names := make([]string, 0, len(r.Header))
		for k := range r.Header {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			b = appendBytes(b, k)
			vs := r.Header[k]
			b = binary.AppendUvarint(b, uint64(len(vs)))
			for _, v := range vs {
				b = appendBytes(b, v)
			}
		}
	}
	b = binary.AppendUvarint(b, uint64(len(r.Body)))
	return append(b, r.Body...)
}

func appendBytes(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// UnmarshalResponse decodes what MarshalResponse produced. The returned
// Body aliases b.
func UnmarshalResponse(b []byte) (Response, error) {
	var r Response
	if len(b) < 2 || b[0] != codecVersion {
		return r, fmt.Errorf("%w: bad header", errCorrupt)
	}
	r.BodyOmitted = b[1]&flagBodyOmitted != 0
	d := decoder{b: b[2:]}
	status := d.uvarint()
	if status > 999 {
		return r, fmt.Errorf("%w: status %d", errCorrupt, status)
	}
	r.Status = int(status)
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		return r, fmt.Errorf("%w: header count", errCorrupt)
	}
	if n > 0 {
		r.Header = make(http.Header, n)
		for i := uint64(0); i < n && d.err == nil; i++ {
			k := d.str()
			m := d.uvarint()
			if m > uint64(len(d.b)) {
				return r, fmt.Errorf("%w: value count", errCorrupt)
			}
			vs := make([]string, 0, m)
			for j := uint64(0); j < m && d.err == nil; j++ {
				vs = append(vs, d.str())
			}
			r.Header[k] = vs
		}
	}
	body := d.bytes()
	if d.err != nil {
		return Response{}, d.err
	}
	if len(d.b) != 0 {
		return Response{}, fmt.Errorf("%w: trailing bytes", errCorrupt)
	}
	r.Body = body
	return r, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: varint", errCorrupt)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: length %d exceeds %d remaining", errCorrupt, n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.bytes()) }
