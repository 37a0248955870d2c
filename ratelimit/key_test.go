package ratelimit_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/leveehq/levee/ratelimit"
)

func TestClientIP(t *testing.T) {
	t.Parallel()
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	cases := []struct {
		name, remote, xff, fwd string
		want                   string
		ok                     bool
	}{
		{"direct client", "203.0.113.7:5555", "", "", "203.0.113.7", true},
		{"untrusted peer: headers ignored", "203.0.113.7:5555", "198.51.100.1", `for=198.51.100.2`, "203.0.113.7", true},
		{"trusted proxy appends the client", "10.1.2.3:80", "198.51.100.1", "", "198.51.100.1", true},
		{"client-written entries left of it are ignored", "10.1.2.3:80", "6.6.6.6, 198.51.100.1", "", "198.51.100.1", true},
		{"chain of trusted proxies", "10.1.2.3:80", "198.51.100.1, 10.9.9.9, 10.8.8.8", "", "198.51.100.1", true},
		{"all trusted: the furthest hop", "10.1.2.3:80", "10.4.4.4, 10.5.5.5", "", "10.4.4.4", true},
		{"garbage stops at the last trusted hop", "10.1.2.3:80", "198.51.100.1, garbage", "", "10.1.2.3", true},
		{"unknown stops at the last trusted hop", "10.1.2.3:80", "unknown, 10.9.9.9", "", "10.9.9.9", true},
		{"entries with ports", "10.1.2.3:80", "198.51.100.1:4711", "", "198.51.100.1", true},
		{"IPv6 grouped by /64", "[2001:db8:1:2:3:4:5:6]:443", "", "", "2001:db8:1:2::/64", true},
		{"IPv6 neighbours share a key", "[2001:db8:1:2:ffff::1]:443", "", "", "2001:db8:1:2::/64", true},
		{"IPv4-mapped IPv6 is IPv4", "[::ffff:203.0.113.9]:1", "", "", "203.0.113.9", true},
		{"IPv6 zone dropped", "[fe80::1%eth0]:1", "", "", "fe80::/64", true},
		{"XFF with IPv6 in brackets", "10.1.2.3:80", "[2001:db8::1]:8080", "", "2001:db8::/64", true},
		{"Forwarded when no XFF", "10.1.2.3:80", "", `for=192.0.2.60;proto=http;by=203.0.113.43`, "192.0.2.60", true},
		{"Forwarded quoted IPv6 with port", "10.1.2.3:80", "", `for="[2001:db8:cafe::17]:4711"`, "2001:db8:cafe::/64", true},
		{"Forwarded list walks from the right", "10.1.2.3:80", "", `for=6.6.6.6, for=192.0.2.61, for=10.7.7.7`, "192.0.2.61", true},
		{"Forwarded obfuscated", "10.1.2.3:80", "", `for=_hidden, for=10.7.7.7`, "10.7.7.7", true},
		{"XFF wins over Forwarded", "10.1.2.3:80", "198.51.100.1", `for=192.0.2.60`, "198.51.100.1", true},
		{"trusted IPv6 proxy", "[fd00::1]:80", "198.51.100.1", "", "198.51.100.1", true},
		{"RemoteAddr without port", "203.0.113.7", "", "", "203.0.113.7", true},
		{"Unix socket", "@", "198.51.100.1", "", "", false},
		{"empty RemoteAddr", "", "", "", "", false},
	}
	f := ratelimit.ClientIP(trusted)
	for _, c := range cases {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = c.remote
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		if c.fwd != "" {
			r.Header.Set("Forwarded", c.fwd)
		}
		got, ok := f(r)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: got (%q, %v), want (%q, %v)", c.name, got, ok, c.want, c.ok)
		}
	}
	// Several X-Forwarded-For lines are one list, in order.
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "10.1.2.3:80"
	r.Header.Add("X-Forwarded-For", "6.6.6.6")
	r.Header.Add("X-Forwarded-For", "198.51.100.1, 10.2.2.2")
	if got, _ := f(r); got != "198.51.100.1" {
		t.Errorf("two XFF lines: %q", got)
	}
	// Without trusted proxies, headers never matter.
	if got, _ := ratelimit.ClientIP(nil)(r); got != "10.1.2.3" {
		t.Errorf("no trusted proxies: %q", got)
	}
}

func TestKeyFuncs(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodGet, "/orders/7", nil)
	r.RemoteAddr = "203.0.113.7:1"
	r.Header.Set("X-Api-Key", "secret")
	if k, ok := ratelimit.Header("x-api-key")(r); k != "secret" || !ok {
		t.Errorf("Header: %q %v", k, ok)
	}
	if _, ok := ratelimit.Header("X-Other")(r); ok {
		t.Error("absent header applies")
	}
	r.Header.Set("X-Empty", "")
	if _, ok := ratelimit.Header("X-Empty")(r); ok {
		t.Error("empty header applies")
	}
	if k, ok := ratelimit.Constant("all")(r); k != "all" || !ok {
		t.Errorf("Constant: %q %v", k, ok)
	}
	if _, ok := ratelimit.Route()(r); ok {
		t.Error("Route applies to a request the mux has not routed")
	}
	mux := http.NewServeMux()
	var got string
	mux.HandleFunc("GET /orders/{id}", func(w http.ResponseWriter, r *http.Request) { got, _ = ratelimit.Route()(r) })
	mux.ServeHTTP(httptest.NewRecorder(), r)
	if got != "GET /orders/{id}" {
		t.Errorf("Route: %q", got)
	}
	a, _ := ratelimit.Join(ratelimit.Constant("a:b"), ratelimit.Constant("c"))(r)
	b, _ := ratelimit.Join(ratelimit.Constant("a"), ratelimit.Constant("b:c"))(r)
	if a == b {
		t.Errorf("Join is ambiguous: %q", a)
	}
	if _, ok := ratelimit.Join(ratelimit.Constant("a"), ratelimit.Header("X-Other"))(r); ok {
		t.Error("Join applies although a part does not")
	}
}

func TestParseKey(t *testing.T) {
	t.Parallel()
	env := ratelimit.KeyEnv{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Route: "orders"}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "10.0.0.1:1"
	r.Header.Set("X-Forwarded-For", "198.51.100.1")
	r.Header.Set("X-Api-Key", "k1")
	cases := []struct{ spec, want string }{
		{"ip", "198.51.100.1"},
		{"header:X-Api-Key", "k1"},
		{"route", "orders"},
		{"const", ""},
		{"const:global", "global"},
		{" IP ", "198.51.100.1"},
	}
	for _, c := range cases {
		f, err := ratelimit.ParseKey(c.spec, env)
		if err != nil {
			t.Errorf("%q: %v", c.spec, err)
			continue
		}
		if got, ok := f(r); got != c.want || !ok {
			t.Errorf("%q: got (%q, %v), want %q", c.spec, got, ok, c.want)
		}
	}
	joined, err := ratelimit.ParseKey("ip+route", env)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := joined(r); got != "12:198.51.100.16:orders" {
		t.Errorf("ip+route: %q", got)
	}
	for _, bad := range []string{"", "ip:1", "header", "header:", "header:X Y", "cookie:a", "route:x", "ip+"} {
		if _, err := ratelimit.ParseKey(bad, env); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
