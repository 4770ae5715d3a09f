package plans

import (
	"crypto/sha256"
	"encoding/hex"
)

// Digest identifies a plan's content: "sha256:" and the hex digest of its
// canonical YAML. The executor records it so a run with a different plan is
// noticed.
func Digest(p *Plan) (string, error) {
	b, err := Marshal(p)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}
