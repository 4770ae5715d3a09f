package prometheus

import "syscall"

// childProcAttr makes the kernel SIGKILL the child when this process dies, so
// a crashed or killed sandbox leaves no Prometheus behind.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
