// Package cli holds what every command shares and nothing else: exit codes
// carried by errors, output formats, and the logger. Only main calls os.Exit;
// commands return errors that say which code they mean.
package cli

import (
	"errors"
	"fmt"
)

// Exit codes, as documented in the README.
const (
	ExitOK = 0
	// ExitError: something failed; nothing is known to be half-done.
	ExitError = 1
	// ExitUsage: bad usage or invalid input; nothing was touched.
	ExitUsage = 2
	// ExitRolledBack: a gate or probe failed and the stage was rolled back.
	ExitRolledBack = 3
	// ExitRollbackFailed: a gate failed and the rollback failed too; a
	// person must look.
	ExitRollbackFailed = 4
	// ExitLocked: another run holds the lock (Lease); nothing was touched.
	ExitLocked = 5
)

// ExitCodeError carries an exit code with an error.
type ExitCodeError struct {
	Code int
	Err  error
}

func (e *ExitCodeError) Error() string { return e.Err.Error() }
func (e *ExitCodeError) Unwrap() error { return e.Err }

// WithCode wraps err so that main exits with code.
func WithCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &ExitCodeError{Code: code, Err: err}
}

// Usagef reports bad usage or invalid input (exit 2).
func Usagef(format string, args ...any) error {
	return WithCode(ExitUsage, fmt.Errorf(format, args...))
}

// Code returns the exit code an error asks for (1 when it does not say).
func Code(err error) int {
	if err == nil {
		return ExitOK
	}
	var ec *ExitCodeError
	if errors.As(err, &ec) {
		return ec.Code
	}
	return ExitError
}
