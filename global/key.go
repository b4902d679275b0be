package global

import "strings"

// Key returns the base Redis key of one user under one rule:
//
//	prefix:{user}:rule
//
// The braces are a cluster hash tag, so every key of one user lands in one
// slot and a multi-rule script may touch them together. Braces and '%' in
// user and rule are percent-escaped, which keeps the tag intact and the
// mapping one-to-one; so is ':' in the rule, so that the keys derived from
// a base key by a suffix (the sliding log's ":m") are never another rule's
// base key. prefix must not contain braces.
func Key(prefix, rule, user string) string {
	return prefix + ":{" + escape(user, "{}%") + "}:" + escape(rule, "{}%:")
}

// escape percent-encodes the bytes of s that are in special ('{', '}',
// '%' and ':' at most). The common case allocates nothing.
func escape(s, special string) string {
	if !strings.ContainsAny(s, special) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case strings.IndexByte(special, c) < 0:
			b.WriteByte(c)
		case c == '{':
			b.WriteString("%7B")
		case c == '}':
			b.WriteString("%7D")
		case c == '%':
			b.WriteString("%25")
		case c == ':':
			b.WriteString("%3A")
		}
	}
	return b.String()
}
