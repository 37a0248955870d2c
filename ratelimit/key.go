package ratelimit

import (
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// KeyFunc extracts the key a policy partitions its state by. ok false
// means the policy does not apply to the request (for example, no API key
// header): the request is neither limited nor charged by it.
type KeyFunc func(r *http.Request) (key string, ok bool)

// ClientIP keys by the client's IP address. IPv4 addresses are used as
// they are; IPv6 addresses are grouped by their /64 prefix (one customer
// site or host usually owns a whole /64), keyed as "2001:db8:1:2::/64";
// IPv4-mapped IPv6 addresses count as IPv4.
//
// The peer address (Request.RemoteAddr) is the client unless it falls in
// one of the trusted proxy prefixes. Only then is X-Forwarded-For read
// (or, when the request has none, the for= parameters of Forwarded, RFC
// 7239): walking from the right, past addresses that are themselves
// trusted proxies, the first untrusted address is the client. Entries
// left of it were written by the client and are ignored, so a client
// cannot choose its key by sending these headers. If an entry cannot be
// parsed the walk stops at the last trusted hop, which keys the request
// by that proxy rather than by anything the client wrote. Trusted proxies
// must append to X-Forwarded-For (or to Forwarded if they use only that
// one and strip X-Forwarded-For).
//
// ok is false only when RemoteAddr is not an IP address (a Unix socket).
func ClientIP(trusted []netip.Prefix) KeyFunc {
	tr := make([]netip.Prefix, 0, len(trusted))
	for _, p := range trusted {
		if p.IsValid() {
			tr = append(tr, p.Masked())
		}
	}
	isTrusted := func(a netip.Addr) bool {
		for _, p := range tr {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	return func(r *http.Request) (string, bool) {
		addr, ok := parseHostPort(r.RemoteAddr)
		if !ok {
			return "", false
		}
		if len(tr) > 0 && isTrusted(addr) {
			if v := r.Header.Values("X-Forwarded-For"); len(v) > 0 {
				addr = walkHops(addr, v, splitXFF, isTrusted)
			} else if v := r.Header.Values("Forwarded"); len(v) > 0 {
				addr = walkHops(addr, v, splitForwarded, isTrusted)
			}
		}
		return IPKey(addr), true
	}
}

// IPKey returns the key ClientIP uses for a: the address for IPv4 (and
// IPv4-mapped IPv6), the /64 prefix for IPv6.
func IPKey(a netip.Addr) string {
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(64)
	return p.String()
}

// walkHops returns the client address from header lines vals (the
// rightmost is nearest), starting from the trusted peer.
func walkHops(peer netip.Addr, vals []string, split func(string) []string, trusted func(netip.Addr) bool) netip.Addr {
	cur := peer
	for i := len(vals) - 1; i >= 0; i-- {
		hops := split(vals[i])
		for j := len(hops) - 1; j >= 0; j-- {
			a, ok := parseHostPort(hops[j])
			if !ok {
				return cur
			}
			cur = a
			if !trusted(a) {
				return a
			}
		}
	}
	return cur
}

func splitXFF(v string) []string { return strings.Split(v, ",") }

// splitForwarded returns the for= values of a Forwarded field line, in
// order; an element without for= yields "" (unparseable, ending the walk).
func splitForwarded(v string) []string {
	var out []string
	for _, elem := range splitQuoted(v, ',') {
		var val string
		for _, pair := range splitQuoted(elem, ';') {
			k, x, ok := strings.Cut(strings.TrimSpace(pair), "=")
			if ok && strings.EqualFold(strings.TrimSpace(k), "for") {
				val = strings.TrimSpace(x)
				if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
					val = strings.ReplaceAll(val[1:len(val)-1], `\`, "")
				}
				break
			}
		}
		out = append(out, val)
	}
	return out
}

// splitQuoted splits s at sep outside double quotes.
func splitQuoted(s string, sep byte) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == sep && !quoted:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// parseHostPort reads "1.2.3.4", "1.2.3.4:80", "::1", "[::1]" or
// "[::1]:80", with optional surrounding spaces.
func parseHostPort(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Addr{}, false
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	if s[0] == '[' {
		host, rest, ok := strings.Cut(s[1:], "]")
		if !ok || (rest != "" && !validPort(rest)) {
			return netip.Addr{}, false
		}
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() {
			return netip.Addr{}, false
		}
		return a.Unmap().WithZone(""), true
	}
	if host, port, ok := strings.Cut(s, ":"); ok && validPort(":"+port) {
		if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func validPort(s string) bool {
	if len(s) < 2 || len(s) > 6 || s[0] != ':' {
		return false
	}
	n, err := strconv.ParseUint(s[1:], 10, 16)
	return err == nil && n <= 65535
}

// Header keys by the value of the named request header (all its values,
// joined by ", "). A request without the header, or with an empty value,
// is not subject to the policy.
func Header(name string) KeyFunc {
	name = http.CanonicalHeaderKey(name)
	return func(r *http.Request) (string, bool) {
		v := r.Header[name]
		switch len(v) {
		case 0:
			return "", false
		case 1:
			return v[0], v[0] != ""
		}
		k := strings.Join(v, ", ")
		return k, strings.TrimSpace(strings.ReplaceAll(k, ",", "")) != ""
	}
}

// Constant keys every request by v: one shared limit.
func Constant(v string) KeyFunc {
	return func(*http.Request) (string, bool) { return v, true }
}

// Route keys by the pattern of the http.ServeMux route that matched
// (Request.Pattern, Go 1.22+), so every request to a route shares one
// limit whatever its path parameters. The pattern is set only once the mux
// has routed the request: wrap each route's handler, not the mux, or use
// Constant with the route's name. A request without a pattern is not
// subject to the policy.
func Route() KeyFunc {
	return func(r *http.Request) (string, bool) { return r.Pattern, r.Pattern != "" }
}

// Join keys by several sources at once, for example per client IP per
// route. The parts are length-prefixed so that no two different tuples
// give the same key. If any part does not apply, the policy does not.
func Join(parts ...KeyFunc) KeyFunc {
	parts = append([]KeyFunc(nil), parts...)
	return func(r *http.Request) (string, bool) {
		var b strings.Builder
		for _, f := range parts {
			k, ok := f(r)
			if !ok {
				return "", false
			}
			b.WriteString(strconv.Itoa(len(k)))
			b.WriteByte(':')
			b.WriteString(k)
		}
		return b.String(), true
	}
}

// KeyEnv is what ParseKey needs beyond the spec itself.
type KeyEnv struct {
	// TrustedProxies are the prefixes whose X-Forwarded-For and
	// Forwarded headers "ip" honours. Default none.
	TrustedProxies []netip.Prefix
	// Route is the name of the route the policy is attached to; "route"
	// keys by it. Empty: "route" uses Route() (the ServeMux pattern).
	Route string
}

// ParseKey builds a KeyFunc from a spec:
//
//	ip              ClientIP(env.TrustedProxies)
//	header:NAME     Header(NAME), e.g. header:X-Api-Key
//	route           Constant(env.Route), or Route() if env.Route is ""
//	const           Constant("") (one limit shared by every request)
//	const:VALUE     Constant(VALUE)
//	ip+route        Join of several specs
//
// "+" always joins, so it cannot appear in a header name or constant.
func ParseKey(spec string, env KeyEnv) (KeyFunc, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, fmt.Errorf("ratelimit: key %q: empty; want ip, header:NAME, route or const", spec)
	}
	specs := strings.Split(spec, "+")
	fs := make([]KeyFunc, 0, len(specs))
	for _, s := range specs {
		f, err := parseOneKey(strings.TrimSpace(s), env)
		if err != nil {
			return nil, fmt.Errorf("ratelimit: key %q: %w", spec, err)
		}
		fs = append(fs, f)
	}
	if len(fs) == 1 {
		return fs[0], nil
	}
	return Join(fs...), nil
}

func parseOneKey(s string, env KeyEnv) (KeyFunc, error) {
	kind, arg, hasArg := strings.Cut(s, ":")
	switch strings.ToLower(kind) {
	case "ip":
		if hasArg {
			return nil, fmt.Errorf("%q takes no argument", kind)
		}
		return ClientIP(env.TrustedProxies), nil
	case "header":
		if !hasArg || !validHeaderName(arg) {
			return nil, fmt.Errorf("want header:NAME with a valid header name, got %q", s)
		}
		return Header(arg), nil
	case "route":
		if hasArg {
			return nil, fmt.Errorf("%q takes no argument", kind)
		}
		if env.Route != "" {
			return Constant(env.Route), nil
		}
		return Route(), nil
	case "const":
		return Constant(arg), nil
	}
	return nil, fmt.Errorf("unknown key source %q (want ip, header:NAME, route or const)", kind)
}

// validHeaderName reports whether s is an HTTP field name (a token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

func isTchar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
