package cluster

import (
	"fmt"
	"net"
	"strings"
)

// freePort asks the kernel for an unused loopback TCP port. The port is free
// when this returns, not necessarily when it is used: callers retry once on
// "address already in use".
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func isAddrInUse(s string) bool {
	return strings.Contains(s, "address already in use")
}
