package chaos

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Proxy is a reverse proxy that applies an Injector's faults to the
// requests it forwards to one upstream. Injected resets are TCP resets
// of the client's connection; a truncated body keeps its Content-Length
// and ends with a close. Answers carry X-Chaos-Fault when a status fault
// produced them.
type Proxy struct {
	upstream *url.URL
	tr       *Transport
}

// hop-by-hop fields (RFC 9110 §7.6.1) are not forwarded.
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// NewProxy returns a Proxy to upstream (an absolute http(s) URL; its path
// prefixes every forwarded path). base sends the forwarded requests; nil
// means a clone of http.DefaultTransport without transparent
// decompression. The error names a bad upstream.
func NewProxy(upstream string, in *Injector, base http.RoundTripper) (*Proxy, error) {
	u, err := url.Parse(upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("chaos: upstream %q is not an absolute http(s) URL", upstream)
	}
	if in == nil {
		return nil, errors.New("chaos: NewProxy needs an Injector")
	}
	if base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DisableCompression = true
		base = t
	}
	return &Proxy{upstream: u, tr: &Transport{Base: base, Injector: in}}, nil
}

// Injector returns the proxy's Injector.
func (p *Proxy) Injector() *Injector { return p.tr.Injector }

// ServeHTTP forwards r through the faults. An upstream that cannot be
// reached answers 502.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = p.upstream.Scheme, p.upstream.Host
	out.URL.Path = strings.TrimSuffix(p.upstream.Path, "/") + r.URL.Path
	out.URL.RawPath = ""
	out.Host = p.upstream.Host
	for _, h := range hopByHop {
		out.Header.Del(h)
	}
	if r.ContentLength == 0 {
		out.Body = nil
	}
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		var fe *FaultError
		switch {
		case errors.As(err, &fe):
			drop(w, fe.Kind == "hang")
		case r.Context().Err() != nil:
		default:
			http.Error(w, "chaos: upstream: "+err.Error(), http.StatusBadGateway)
		}
		return
	}
	defer resp.Body.Close()
	for _, h := range hopByHop {
		resp.Header.Del(h)
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	if resp.ContentLength >= 0 {
		w.Header().Set("Content-Length", fmt.Sprint(resp.ContentLength))
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			var fe *FaultError
			drop(w, errors.As(err, &fe) && fe.Kind == "truncate")
			return
		}
	}
}

// drop ends the client's connection: with a TCP reset, or with a plain
// close when graceful. What was written is flushed first.
func drop(w http.ResponseWriter, graceful bool) {
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	conn, _, err := rc.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok && !graceful {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// Control returns the control API, to serve on a listener of its own
// (never the proxied one):
//
//	GET    /faults   the plan in force (YAML, the config file's form)
//	PUT    /faults   replace it with the YAML (or JSON) body; its schedule restarts; 400 names the bad field
//	DELETE /faults   remove every fault
//	GET    /counts   injected faults by name, and "requests"
func (p *Proxy) Control() http.Handler {
	in := p.tr.Injector
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	}
	writeYAML := func(w http.ResponseWriter, c Config) {
		b, err := yaml.Marshal(c)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(b)
	}
	mux.HandleFunc("GET /faults", func(w http.ResponseWriter, r *http.Request) { writeYAML(w, in.Config()) })
	mux.HandleFunc("PUT /faults", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		cfg, err := ParseConfig("body", b)
		if err == nil {
			err = in.SetConfig(cfg)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeYAML(w, in.Config())
	})
	mux.HandleFunc("DELETE /faults", func(w http.ResponseWriter, r *http.Request) {
		_ = in.SetConfig(&Config{Seed: in.Config().Seed})
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /counts", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, in.Counts()) })
	return mux
}
