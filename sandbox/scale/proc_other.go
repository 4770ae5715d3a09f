//go:build !linux

package scale

import "time"

func procCPU(int) time.Duration { return 0 }
func procRSS(int) int64         { return 0 }
