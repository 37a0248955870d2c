package webhook_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	wh "github.com/leveehq/levee/webhook"
)

// isHeaderError reports whether err is a *HeaderError wrapping
// ErrMalformedHeader, the only error a header parser may return.
func isMalformed(err error) bool {
	var he *wh.HeaderError
	return errors.As(err, &he) && errors.Is(err, wh.ErrMalformedHeader)
}

func FuzzParseStripeSignature(f *testing.F) {
	for _, s := range []string{
		"t=1492774577,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
		"t=1492774577,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd,v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39",
		"t=1,v1=00,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
		"t=1, v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
		"t=1,t=2,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
		"v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd", "t=1", "", ",", "=", "t==,v1==",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		ts, sigs, err := wh.ParseStripeSignature(v)
		if err != nil {
			if !isMalformed(err) {
				t.Fatalf("error %v is not a malformed-header error", err)
			}
			return
		}
		if len(sigs) == 0 || !strings.Contains(v, "t="+ts) {
			t.Fatalf("accepted %q: t %q, %d sigs", v, ts, len(sigs))
		}
		for _, s := range sigs {
			if len(s) != 32 || !strings.Contains(strings.ToLower(v), "v1="+hex.EncodeToString(s)) {
				t.Fatalf("signature %x is not in %q", s, v)
			}
		}
	})
}

func FuzzParseStandardSignatures(f *testing.F) {
	for _, s := range []string{
		"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
		"v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
		"v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==",
		"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE  v1,", "v1,", ",", "", " ", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		sigs, err := wh.ParseStandardSignatures(v)
		if err != nil {
			if !isMalformed(err) {
				t.Fatalf("error %v is not a malformed-header error", err)
			}
			return
		}
		for _, s := range sigs {
			if len(s) != 32 || !strings.Contains(v, "v1,"+base64.StdEncoding.EncodeToString(s)) {
				t.Fatalf("signature %x is not in %q", s, v)
			}
		}
	})
}

func FuzzParseSlackSignature(f *testing.F) {
	for _, s := range []string{
		"v0=3d9cb4f7bf0f5f102fddb1c4e88ec2138f829a0327809c853eb505c32a9b6488",
		"v0=3D9CB4F7BF0F5F102FDDB1C4E88EC2138F829A0327809C853EB505C32A9B6488",
		"v0=3d9c", "v1=3d9cb4f7bf0f5f102fddb1c4e88ec2138f829a0327809c853eb505c32a9b6488", "v0=", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		sig, err := wh.ParseSlackSignature(v)
		if err != nil {
			if !isMalformed(err) {
				t.Fatalf("error %v is not a malformed-header error", err)
			}
			return
		}
		if "v0="+hex.EncodeToString(sig) != strings.ToLower(v) {
			t.Fatalf("accepted %q as %x", v, sig)
		}
	})
}

func FuzzParseHMACSignature(f *testing.F) {
	hexScheme := must(wh.NewHMAC(wh.HMACConfig{Secrets: []string{"k"}, Header: "X-Signature", Prefix: "sha256="}))
	b64Scheme := must(wh.NewHMAC(wh.HMACConfig{Secrets: []string{"k"}, Header: "X-Signature", Encoding: wh.EncodingBase64}))
	for _, s := range []string{
		"sha256=fb876035d1fcf10874898ecb5733ce2c5ba89c3caec7d2a2f05d3f174e1bd6af",
		"6SQKgW52/f+5+S9uiwBs2oDBrOKQSgqHvAQLh4qx55A=", "6SQKgW52/f+5+S9uiwBs2oDBrOKQSgqHvAQLh4qx55B=",
		"6SQKgW52/f+5+S9uiwBs2oDBrOKQSgqHvAQLh4qx55A", "sha256=", "", "sha256=zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if sig, err := hexScheme.ParseSignature(v); err != nil {
			if !isMalformed(err) {
				t.Fatalf("hex: error %v is not a malformed-header error", err)
			}
		} else if "sha256="+hex.EncodeToString(sig) != strings.ToLower(v) {
			t.Fatalf("hex: accepted %q as %x", v, sig)
		}
		if sig, err := b64Scheme.ParseSignature(v); err != nil {
			if !isMalformed(err) {
				t.Fatalf("base64: error %v is not a malformed-header error", err)
			}
		} else if base64.StdEncoding.EncodeToString(sig) != v {
			t.Fatalf("base64: accepted %q as %x (not canonical)", v, sig)
		}
	})
}

func FuzzIDFromJSON(f *testing.F) {
	for _, s := range []struct{ body, path string }{
		{`{"id":"evt_1"}`, "id"}, {`{"data":{"object":{"id":"pi_1"}}}`, "data.object.id"},
		{`{"id":12345678901234567890}`, "id"}, {`{"id":null}`, "id"}, {`{"id":""}`, "id"},
		{`{"id":"a\u0000b"}`, "id"}, {`{"a":[1,2]}`, "a.b"}, {`{"id":"x"`, "id"}, {` {"id":"x"} `, "id"},
		{`{"id":"1","id":"2"}`, "id"}, {`[]`, "id"}, {`{"a":{}}`, "a..b"},
	} {
		f.Add([]byte(s.body), s.path)
	}
	f.Fuzz(func(t *testing.T, body []byte, path string) {
		id, err := wh.IDFromJSON(body, path)
		switch {
		case err == nil:
			if id == "" {
				t.Fatal("empty id without error")
			}
		case errors.Is(err, wh.ErrMalformedJSON) == errors.Is(err, wh.ErrMissingID):
			t.Fatalf("error %v is not exactly one of ErrMalformedJSON, ErrMissingID", err)
		}
		// Differential: the same answer as a full encoding/json decode.
		wantID, wantErr := referenceID(body, path)
		if id != wantID || !errors.Is(err, wantErr) || (err == nil) != (wantErr == nil) {
			t.Fatalf("IDFromJSON(%q, %q) = %q, %v; encoding/json says %q, %v", body, path, id, err, wantID, wantErr)
		}
	})
}

// Verify never panics on any header value, returns only this package's
// errors, and a Sign/Verify round trip holds for any body and id.
func FuzzVerify(f *testing.F) {
	f.Add([]byte(`{"id":"evt_1"}`), "evt_1", "t=1,v1=00", int64(1_750_000_000))
	f.Add([]byte{}, "x", "v1,AAAA", int64(0))
	f.Add([]byte("\x00\xff"), "id with spaces", "sha256=", int64(99999999999))
	schemes := newSchemes(f, secretNew, secretOld)
	headers := []string{"Webhook-Signature", "Webhook-Timestamp", "Stripe-Signature", "X-Hub-Signature-256",
		"X-Shopify-Hmac-Sha256", "X-Slack-Signature", "X-Slack-Request-Timestamp", "X-Signature", "X-Timestamp"}
	sentinels := []error{wh.ErrMissingHeader, wh.ErrMalformedHeader, wh.ErrBadSignature, wh.ErrStaleTimestamp,
		wh.ErrFutureTimestamp, wh.ErrMalformedJSON, wh.ErrMissingID}
	f.Fuzz(func(t *testing.T, b []byte, id, value string, unix int64) {
		at := time.Unix(int64(uint64(unix)%100_000_000_000), 0) // Sign refuses times before 1970
		for name, s := range schemes {
			if id != "" && !strings.ContainsAny(id, "\r\n") {
				h := http.Header{}
				if err := s.Sign(h, id, b, at); err != nil {
					t.Fatalf("%s: Sign: %v", name, err)
				}
				ev, err := s.Verify(h, b, at)
				if name == "stripe" && (errors.Is(err, wh.ErrMalformedJSON) || errors.Is(err, wh.ErrMissingID)) {
					ev.Body, err = b, nil // Stripe reads the id from the body, which is arbitrary here
				}
				if err != nil || !bytes.Equal(ev.Body, b) {
					t.Fatalf("%s: round trip: %v", name, err)
				}
				for _, k := range headers { // a forged value in any signed header
					if h.Get(k) == "" || h.Get(k) == value {
						continue
					}
					h2 := h.Clone()
					h2.Set(k, value)
					if _, err := s.Verify(h2, b, at); err == nil {
						t.Fatalf("%s: %s = %q accepted", name, k, value)
					}
				}
			}
			h := http.Header{}
			for _, k := range headers {
				h.Set(k, value)
			}
			h.Set("Webhook-Id", id)
			_, err := s.Verify(h, b, at)
			ok := err == nil
			for _, e := range sentinels {
				ok = ok || errors.Is(err, e)
			}
			if !ok {
				t.Fatalf("%s: error %v wraps no sentinel", name, err)
			}
		}
	})
}

// referenceID is IDFromJSON written with a full encoding/json decode.
func referenceID(body []byte, path string) (string, error) {
	if wh.ValidateIDPath(path) != nil {
		return "", wh.ErrMissingID
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if !json.Valid(body) || dec.Decode(&v) != nil {
		return "", wh.ErrMalformedJSON
	}
	for _, seg := range strings.Split(path, ".") {
		obj, ok := v.(map[string]any)
		if !ok {
			return "", wh.ErrMissingID
		}
		if v, ok = obj[seg]; !ok {
			return "", wh.ErrMissingID
		}
	}
	switch x := v.(type) {
	case string:
		if x != "" {
			return x, nil
		}
	case json.Number:
		return string(x), nil
	}
	return "", wh.ErrMissingID
}
