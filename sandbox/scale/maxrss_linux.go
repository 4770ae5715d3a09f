package scale

import (
	"os/exec"
	"time"
)

// peakRSS watches a started child's peak resident set: VmHWM of
// /proc/PID/status, read every 10 ms until stop. The child's rusage
// (ru_maxrss) cannot be used: os/exec starts children with
// CLONE_VM|CLONE_VFORK, and Linux folds the parent's high-water RSS into
// the child's maxrss at exec (exec_mmap calls setmax_mm_hiwater_rss on the
// mm it leaves, here the parent's), so every child of a 400 MB test
// process reported at least 400 MB, /bin/true included. VmHWM belongs to
// the child's own mm; what the last 10 ms before exit add is missed.
type peakRSS struct {
	done chan struct{}
	max  chan int64
}

func watchRSS(cmd *exec.Cmd) *peakRSS {
	w := &peakRSS{done: make(chan struct{}), max: make(chan int64, 1)}
	pid := cmd.Process.Pid
	go func() {
		var peak int64
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			peak = max(peak, procStatusBytes(pid, "VmHWM:"))
			select {
			case <-w.done:
				w.max <- peak
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// stop ends the watch (call it once the child has exited) and returns
// the peak in bytes.
func (w *peakRSS) stop() int64 {
	close(w.done)
	return <-w.max
}
