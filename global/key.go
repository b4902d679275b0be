package global

import (
	"crypto/sha256"
	"encoding/base64"
	"strings"
)

// MaxPlainUserBytes is the longest user key that Key writes into the Redis
// key as is (escaped). A longer one is replaced by its digest: DigestMarker
// and the unpadded base64url of the first 128 bits of its SHA-256, 24 bytes
// in all. So a Redis key, and the local State that carries it, stays short
// whatever the length of the user key (Config.MaxKeyBytes still bounds what
// a caller may pass).
const MaxPlainUserBytes = 64

// DigestMarker begins the user part of a Redis key whose user key is longer
// than MaxPlainUserBytes. escape never writes it: every '%' of a user key
// becomes "%25", and escape writes '%' only before "7B", "7D" or "25". So
// no escaped user key equals a digest form, and the mapping from user keys
// to Redis keys stays one-to-one up to a collision of the truncated digest
// (see digest).
const DigestMarker = "%#"

// digestBytes is the length of the truncated SHA-256 in a digest form.
const digestBytes = 16

// Key returns the base Redis key of one user under one rule:
//
//	prefix:{user}:rule
//
// The braces are a cluster hash tag, so every key of one user lands in one
// slot and a multi-rule script may touch them together. Braces and '%' in
// user and rule are percent-escaped, which keeps the tag intact and the
// mapping one-to-one; so is ':' in the rule, so that the keys derived from
// a base key by a suffix (the sliding log's ":m") are never another rule's
// base key. A user longer than MaxPlainUserBytes is replaced by its digest
// form (see DigestMarker). prefix must not contain braces.
func Key(prefix, rule, user string) string {
	return prefix + ":{" + userPart(user) + "}:" + escape(rule, "{}%:")
}

// userPart is the user's part of its Redis keys: the user escaped, or the
// digest form of a long one.
func userPart(user string) string {
	if len(user) > MaxPlainUserBytes {
		return digest(user)
	}
	return escape(user, "{}%")
}

// digest returns DigestMarker and the unpadded base64url of the first 128
// bits of user's SHA-256: the same in every process and every version, as
// Redis keys shared by instances must be (hash/maphash is seeded per
// process).
//
// 128 bits: by the birthday bound, n distinct long keys collide (two users
// sharing one count) with probability about n²/2^129: below 10^-15 for
// n = 10^12 keys. Finding a collision on purpose takes about 2^64 SHA-256
// evaluations and only makes two keys of the attacker's share a count;
// taking another user's count needs a second preimage, about 2^128.
func digest(user string) string {
	sum := sha256.Sum256([]byte(user))
	return DigestMarker + base64.RawURLEncoding.EncodeToString(sum[:digestBytes])
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
