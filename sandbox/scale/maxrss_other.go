//go:build !linux

package scale

import "os"

// maxRSS is unknown off Linux (macOS reports bytes, others differ).
func maxRSS(*os.ProcessState) int64 { return 0 }
