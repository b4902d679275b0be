package httplimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// QuotaExceededType is the problem type of a denied request, defined by
// draft-ietf-httpapi-ratelimit-headers-11, section 5.1.
const QuotaExceededType = "https://iana.org/assignments/http-problem-types#quota-exceeded"

// Problem is an RFC 9457 problem details object, as the middleware writes
// it with Content-Type application/problem+json.
type Problem struct {
	// Type is a URI naming the problem type; "about:blank" when the status
	// code says it all.
	Type string `json:"type"`
	// Title is a short summary of the problem type.
	Title string `json:"title"`
	// Status is the HTTP status code.
	Status int `json:"status"`
	// Detail explains this occurrence.
	Detail string `json:"detail,omitempty"`
	// ViolatedPolicies names the policies (rules) whose quota was exceeded:
	// the quota-exceeded type's extension member.
	ViolatedPolicies []string `json:"violated-policies,omitempty"`
}

// writeProblem writes p as the response, with its status.
func writeProblem(w http.ResponseWriter, p Problem) {
	body, err := json.Marshal(p)
	if err != nil { // a Problem always marshals
		panic(err)
	}
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	h.Del("Content-Encoding")
	w.WriteHeader(p.Status)
	_, _ = w.Write(append(body, '\n'))
}

// WriteError is the default Options.OnError: 400 for an error wrapping
// ratelimit.ErrInvalidKey (the caller cannot be named, or its key is too
// long), else 503 with Retry-After: 1; both with a problem+json body. The
// error's text is not sent: it may name internals.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ratelimit.ErrInvalidKey) {
		writeProblem(w, Problem{
			Type:   "about:blank",
			Title:  http.StatusText(http.StatusBadRequest),
			Status: http.StatusBadRequest,
			Detail: "the request's caller cannot be identified for rate limiting",
		})
		return
	}
	w.Header().Set("Retry-After", "1")
	writeProblem(w, Problem{
		Type:   "about:blank",
		Title:  http.StatusText(http.StatusServiceUnavailable),
		Status: http.StatusServiceUnavailable,
		Detail: "the rate limiter cannot decide the request",
	})
}

// sfString serializes s as a Structured Field string (RFC 8941, section
// 4.1.6): quoted, with '"' and '\' escaped. Only printable ASCII can be
// one.
func sfString(s string) (string, error) {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			return "", fmt.Errorf("byte %#x at %d cannot be in a structured field string", c, i)
		}
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String(), nil
}

// percentEncode returns s with each byte that cannot be in a Structured
// Field string (outside printable ASCII) written as %XX.
func percentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}
