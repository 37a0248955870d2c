package ratelimit_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/leveehq/levee/ratelimit"
)

func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{"100/s burst 200", "1000/hour", "5000/day", "10/m burst 20", "concurrency 50",
		"100/10s", " 7 / minutes BURST 1", "1/d burst 400", "0/s", "concurrency", "9999999999/s",
		"10000/month", "5/Weeks", "100/day calendar", "3/d calendar", "1/month calendar", "1/h calendar", "2/week burst 2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ratelimit.ParsePolicy(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "ratelimit: policy") {
				t.Fatalf("%q: error %q lacks its prefix", s, err)
			}
			return
		}
		p.Name = "n"
		if err := p.Validate(); err != nil {
			t.Fatalf("%q parsed to an invalid policy %+v: %v", s, p, err)
		}
		p.Name = ""
		q, err := ratelimit.ParsePolicy(p.String())
		if err != nil || q != p {
			t.Fatalf("%q: round trip through %q gave %+v, %v; want %+v", s, p.String(), q, err, p)
		}
	})
}

func FuzzParseFields(f *testing.F) {
	for _, s := range []string{`"burst";q=100;w=1`, `burst;q=100;w=60,"daily";q=1000;w=86400`,
		`"c";q=5;qu="concurrent-requests";x=?1;y=1.5`, `"a";r=0;t=3, b;r=9`, `"a\"b";q=1`, `(a);q=1`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if pols, err := ratelimit.ParsePolicyField(s); err == nil {
			for _, p := range pols {
				if p.Quota < 0 || p.Window < 0 {
					t.Fatalf("%q: %+v", s, p)
				}
				// Any parsed policy name that is valid formats back to
				// something that parses to the same name.
				pol := ratelimit.Policy{Name: p.Name, Limit: 1, Period: 1e9}
				if pol.Validate() == nil {
					back, err := ratelimit.ParsePolicyField(ratelimit.PolicyField(pol, ratelimit.Result{}))
					if err != nil || len(back) != 1 || back[0].Name != p.Name {
						t.Fatalf("name %q does not round-trip: %+v %v", p.Name, back, err)
					}
				}
			}
		}
		if sts, err := ratelimit.ParseStateField(s); err == nil {
			for _, st := range sts {
				if st.Remaining < 0 || st.Reset < -1 {
					t.Fatalf("%q: %+v", s, st)
				}
			}
		}
	})
}

// ClientIP never panics, always yields an IPv4 address or an IPv6 /64,
// and ignores the headers of untrusted peers.
func FuzzClientIP(f *testing.F) {
	f.Add("10.1.2.3:80", "198.51.100.1, 10.9.9.9", `for="[2001:db8::1]:80"`)
	f.Add("[2001:db8::1]:443", "garbage", "")
	f.Add("203.0.113.7:1", "1.2.3.4", "for=5.6.7.8")
	f.Add("10.0.0.1:1", "", `for=_x;by=y, for="\"`)
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	ip := ratelimit.ClientIP(trusted)
	f.Fuzz(func(t *testing.T, remote, xff, fwd string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = remote
		r.Header["X-Forwarded-For"] = []string{xff}
		r.Header["Forwarded"] = []string{fwd}
		k, ok := ip(r)
		if !ok {
			return
		}
		if a, err := netip.ParseAddr(k); err == nil {
			if !a.Is4() {
				t.Fatalf("key %q is an IPv6 address, not a /64", k)
			}
		} else if p, err := netip.ParsePrefix(k); err != nil || p.Bits() != 64 || !p.Addr().Is6() || p.Masked() != p {
			t.Fatalf("key %q is neither an IPv4 address nor an IPv6 /64", k)
		}
		if peer, err := netip.ParseAddrPort(remote); err == nil && !trusted[0].Contains(peer.Addr().Unmap()) && !trusted[1].Contains(peer.Addr()) {
			if want := ratelimit.IPKey(peer.Addr()); k != want {
				t.Fatalf("untrusted peer %q keyed as %q, want %q", remote, k, want)
			}
		}
	})
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"ip", "header:X-Api-Key", "route", "const", "const:x", "ip+route", "header:", "+"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		k, err := ratelimit.ParseKey(spec, ratelimit.KeyEnv{Route: "r"})
		if err != nil {
			return
		}
		k(httptest.NewRequest(http.MethodGet, "/", nil))
	})
}
