package plans

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
)

// Digest identifies a plan's content: "sha256:" and the hex digest of its
// canonical YAML (what Encode writes). The executor records it so a run
// with a different plan is noticed, and `apply --plan-digest` pins it.
// It streams the YAML into the hash: nothing the size of the plan is held.
func Digest(p *Plan) (string, error) {
	sum := sha256.New()
	w := bufio.NewWriterSize(sum, 64<<10)
	if err := Encode(w, p); err != nil {
		return "", err
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(sum.Sum(nil)), nil
}
