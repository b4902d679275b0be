package global

import (
	"strings"
	"testing"
)

// TestKeyDigestVector: a long user key's digest form is fixed across
// processes and versions. The vector is the SHA-256 of 65 'a's as
// sha256sum prints it, 635361c48bb9eab14198e76ea8ab7f1a..., whose first 16
// bytes in unpadded base64url are Y1NhxIu56rFBmOduqKt_Gg.
func TestKeyDigestVector(t *testing.T) {
	got := Key("p", "r", strings.Repeat("a", 65))
	if want := "p:{%#Y1NhxIu56rFBmOduqKt_Gg}:r"; got != want {
		t.Fatalf("Key = %q, want %q", got, want)
	}
}

// TestKeyThreshold: a user key of MaxPlainUserBytes is kept (escaped); one
// byte more is replaced by a digest form of fixed length; long keys that
// differ in one byte get different digests.
func TestKeyThreshold(t *testing.T) {
	plain := strings.Repeat("x", MaxPlainUserBytes)
	if got, want := Key("p", "r", plain), "p:{"+plain+"}:r"; got != want {
		t.Fatalf("Key of %d bytes = %q, want %q", len(plain), got, want)
	}
	braces := strings.Repeat("{", MaxPlainUserBytes)
	if got, want := Key("p", "r", braces), "p:{"+strings.Repeat("%7B", MaxPlainUserBytes)+"}:r"; got != want {
		t.Fatalf("Key of %d braces = %q, want %q", len(braces), got, want)
	}
	seen := map[string]string{}
	for _, u := range []string{plain + "x", plain + "y", "y" + plain, strings.Repeat("z", 500), strings.Repeat("{", MaxPlainUserBytes+1)} {
		part := userPart(u)
		if !strings.HasPrefix(part, DigestMarker) || len(part) != len(DigestMarker)+22 {
			t.Fatalf("user part of a %d-byte key = %q, want %q and 22 base64url bytes", len(u), part, DigestMarker)
		}
		if strings.ContainsAny(part, "{}") {
			t.Fatalf("digest form %q holds a brace", part)
		}
		if other, dup := seen[part]; dup {
			t.Fatalf("%q and %q share the digest form %q", u, other, part)
		}
		seen[part] = u
	}
}

// TestKeyShortNeverDigest: no short user key's escaped form is a digest
// form, even one written to look like it: escape writes '%' only as the
// start of "%7B", "%7D" or "%25".
func TestKeyShortNeverDigest(t *testing.T) {
	long := strings.Repeat("a", 65)
	forged := userPart(long) // "%#Y1Nh..."
	for _, u := range []string{forged, "%#", "%", "%%##", "{%#}", "%25#", "#" + forged[2:], strings.Repeat("%#", MaxPlainUserBytes/2)} {
		if part := userPart(u); strings.Contains(part, DigestMarker) {
			t.Fatalf("short key %q escapes to %q, which holds %q", u, part, DigestMarker)
		}
		if Key("p", "r", u) == Key("p", "r", long) {
			t.Fatalf("short key %q has the Redis key of a long one", u)
		}
	}
	// Every short key of bytes among the escaped ones and the marker's.
	alphabet := "{}%#a"
	var walk func(prefix string)
	walk = func(prefix string) {
		if strings.Contains(userPart(prefix), DigestMarker) {
			t.Fatalf("short key %q escapes to %q", prefix, userPart(prefix))
		}
		if len(prefix) == 5 {
			return
		}
		for i := range len(alphabet) {
			walk(prefix + alphabet[i:i+1])
		}
	}
	walk("")
}
