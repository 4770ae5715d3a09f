//go:build !linux

package prometheus

import "syscall"

// childProcAttr: Pdeathsig is Linux-only; elsewhere Stop must be called.
func childProcAttr() *syscall.SysProcAttr { return nil }
