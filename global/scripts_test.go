package global

import (
	"crypto/sha1"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestScriptsShareThePrelude checks that every script is built from the
// shared prelude and its own body, and that no body defines again what the
// prelude defines, so that the helpers cannot be copied back into the
// scripts.
func TestScriptsShareThePrelude(t *testing.T) {
	strict := func(a Algorithm) string { return strictBodies[a] + strictMain(a) }
	built := map[string]struct {
		file, body string // the file, and the script's source after the prelude
		script     *redis.Script
	}{
		"sliding_window.lua": {slidingWindowLua, strict(SlidingWindow), scripts[SlidingWindow]},
		"sliding_log.lua":    {slidingLogLua, strict(SlidingLog), scripts[SlidingLog]},
		"fixed_window.lua":   {fixedWindowLua, strict(FixedWindow), scripts[FixedWindow]},
		"token_bucket.lua":   {tokenBucketLua, strict(TokenBucket), scripts[TokenBucket]},
		"multi.lua": {multiLua, strings.Join([]string{slidingWindowLua, slidingLogLua, fixedWindowLua, tokenBucketLua, leaseLua, multiLua}, "\n"),
			multiScript},
		"lease.lua":     {leaseLua, leaseLua + leaseMain, leaseScript},
		"admit.lua":     {admitLua, admitLua, admitScript},
		"heartbeat.lua": {heartbeatLua, heartbeatLua, heartbeatScript},
		"credit.lua":    {creditLua, creditLua, creditScript},
	}

	// Every script file is one of them: a new one cannot skip the prelude.
	files, err := filepath.Glob(filepath.Join("scripts", "*.lua"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		if name == "prelude.lua" {
			continue
		}
		b, ok := built[name]
		if !ok {
			t.Errorf("scripts/%s is not built with the prelude (add it to this test)", name)
			continue
		}
		if src, err := os.ReadFile(f); err != nil || string(src) != b.file {
			t.Errorf("scripts/%s: the embedded body differs from the file (%v)", name, err)
		}
	}

	// Each script's source is the prelude, then the body (go-redis names a
	// script by the SHA-1 of its source).
	for name, b := range built {
		sum := sha1.Sum([]byte(preludeLua + b.body))
		if got, want := b.script.Hash(), hex.EncodeToString(sum[:]); got != want {
			t.Errorf("%s: script SHA %s, want that of prelude + body, %s", name, got, want)
		}
	}

	// The prelude's top-level names.
	var helpers []string
	for _, m := range regexp.MustCompile(`(?m)^local\s+(?:function\s+)?([A-Za-z_]\w*)`).FindAllStringSubmatch(preludeLua, -1) {
		helpers = append(helpers, m[1])
	}
	sort.Strings(helpers)
	if len(helpers) == 0 {
		t.Fatal("found no helper in the prelude")
	}
	for _, h := range helpers {
		redef := regexp.MustCompile(`\b(?:function|local)\s+` + h + `\b`)
		use := regexp.MustCompile(`\b` + h + `\(`)
		users := 0
		for name, b := range built {
			if loc := redef.FindStringIndex(b.body); loc != nil {
				t.Errorf("%s defines %q again, at %q: it is the prelude's", name, h, b.body[loc[0]:loc[1]])
			}
			if use.MatchString(b.body) {
				users++
			}
		}
		// The prelude holds only what two scripts or more use.
		if users < 2 {
			t.Errorf("prelude helper %q is used by %d scripts, want at least 2", h, users)
		}
	}

	// The idioms the prelude's helpers own stay there: TIME is read by
	// server_us, numbers are formatted by int.
	for name, b := range built {
		for _, idiom := range []string{"redis.call('TIME')", "'%.0f'"} {
			if strings.Contains(b.body, idiom) {
				t.Errorf("%s uses %s itself: call the prelude's helper", name, idiom)
			}
		}
	}
	t.Logf("prelude helpers: %s", strings.Join(helpers, ", "))
}
