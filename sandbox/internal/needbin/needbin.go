// Package needbin is the sandbox tests' one check for a cached build
// (kube-apiserver, istiod): skip without it, or fail when CI=true, where a
// test that cannot start the sandbox must never pass by skipping.
package needbin

import (
	"os"
	"testing"
)

// Require skips t, or fails it when CI=true, if find cannot resolve the
// binary.
func Require(t testing.TB, find func(string) (string, error)) {
	t.Helper()
	if _, err := find(""); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v", err)
		}
		t.Skipf("skipping: %v", err)
	}
}
