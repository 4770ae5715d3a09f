package scale

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
)

// TestPeakRSSIsTheChildsOwn: a small child of a process holding 300 MB is
// measured small. With ru_maxrss (the measure before) it reported at least
// the parent's 300 MB: see peakRSS.
func TestPeakRSSIsTheChildsOwn(t *testing.T) {
	ballast := make([]byte, 300<<20)
	for i := range ballast {
		ballast[i] = 1
	}
	cmd := exec.Command("sleep", "0.2")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := watchRSS(cmd)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	peak := w.stop()
	runtime.KeepAlive(ballast)
	if peak <= 0 || peak > 50<<20 {
		t.Fatalf("sleep's peak RSS %d bytes, want a few MB", peak)
	}
	t.Logf("sleep: %d KiB (its rusage says %d KiB)", peak>>10, maxrssOf(cmd)>>10)
}

func maxrssOf(cmd *exec.Cmd) int64 {
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss << 10
	}
	return 0
}
