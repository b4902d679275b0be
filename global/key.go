package global

import "strings"

// Key returns the base Redis key of one user under one rule:
//
//	prefix:{user}:rule
//
// The braces are a cluster hash tag, so every key of one user lands in one
// slot and a multi-rule script may touch them together. Braces and '%' in
// user and rule are percent-escaped, which keeps the tag intact and the
// mapping one-to-one. prefix must not contain braces.
func Key(prefix, rule, user string) string {
	return prefix + ":{" + escape(user) + "}:" + escape(rule)
}

// escape percent-encodes '{', '}' and '%'. The common case allocates nothing.
func escape(s string) string {
	if !strings.ContainsAny(s, "{}%") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '{':
			b.WriteString("%7B")
		case '}':
			b.WriteString("%7D")
		case '%':
			b.WriteString("%25")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
