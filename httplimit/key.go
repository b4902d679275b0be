package httplimit

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ClientKey returns the key of r's client address: "ip:" and an IPv4
// address, or "ip:" and the /64 prefix of an IPv6 address (one subscriber
// usually holds a whole /64). The address is the TCP peer's, unless the
// peer is in trusted: then it is the right-most address of the header
// named forwarded ("X-Forwarded-For", or "Forwarded" for RFC 7239's) that
// is not in trusted, or the left-most one when all are. Only the header
// the trusted proxies maintain may be named: a caller can send the other
// one with any value. An entry that is not an address (an obfuscated
// identifier, "unknown") ends the walk and is keyed as sent, behind "fwd:".
func ClientKey(r *http.Request, trusted []netip.Prefix, forwarded string) (string, error) {
	a, fwd, err := clientAddr(r, trusted, forwarded)
	switch {
	case err != nil:
		return "", err
	case fwd != "":
		return "fwd:" + fwd, nil
	}
	return addrKey(a), nil
}

// clientAddr returns r's client address as ClientKey finds it, or the
// forwarded entry that is not an address (fwd).
func clientAddr(r *http.Request, trusted []netip.Prefix, forwarded string) (a netip.Addr, fwd string, err error) {
	peer, err := parseAddr(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("%w: remote address %q", ErrNoKey, r.RemoteAddr)
	}
	if !isTrusted(peer, trusted) {
		return peer, "", nil
	}
	var chain []string
	if strings.EqualFold(forwarded, "Forwarded") {
		chain = forwardedFor(r.Header)
	} else {
		chain = listValues(r.Header, forwarded)
	}
	client := peer
	for i := len(chain) - 1; i >= 0; i-- {
		a, err := parseAddr(chain[i])
		if err != nil {
			return netip.Addr{}, chain[i], nil
		}
		client = a
		if !isTrusted(a, trusted) {
			break
		}
	}
	return client, "", nil
}

// addrKey is the key of a client address.
func addrKey(a netip.Addr) string {
	if a.Is4() {
		return "ip:" + a.String()
	}
	return "ip:" + netip.PrefixFrom(a, 64).Masked().String()
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseAddr parses an address with or without a port ("1.2.3.4",
// "1.2.3.4:80", "[::1]:80", "::1", "[::1]"), unmapping IPv4-in-IPv6 and
// dropping any zone.
func parseAddr(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	} else if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	return a.Unmap().WithZone(""), nil
}

// listValues returns the comma-separated members of every field named
// name (X-Forwarded-For), in order, or nil.
func listValues(h http.Header, name string) []string {
	var out []string
	for _, v := range h.Values(name) {
		for part := range strings.SplitSeq(v, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

// forwardedFor returns the "for" values of every Forwarded field (RFC
// 7239), in order, unquoted, or nil. An element without "for" yields
// "unknown", so that the walk stops there.
func forwardedFor(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Forwarded") {
		for elem := range strings.SplitSeq(v, ",") {
			if strings.TrimSpace(elem) == "" {
				continue
			}
			val := "unknown"
			for pair := range strings.SplitSeq(elem, ";") {
				k, x, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if ok && strings.EqualFold(k, "for") {
					val = strings.Trim(strings.TrimSpace(x), `"`)
				}
			}
			out = append(out, val)
		}
	}
	return out
}
