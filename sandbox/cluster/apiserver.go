package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// serviceAccountIssuer is the issuer (and audience) of service account
// tokens, as on a default cluster.
const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// apiserverProc is a running kube-apiserver child.
type apiserverProc struct {
	cmd     *exec.Cmd
	logFile *os.File
	logPath string
	port    int

	done    chan struct{} // closed when the process has exited
	exitErr error         // valid after done is closed

	stopOnce sync.Once
	stopErr  error
}

func apiserverArgs(port int, etcdURL string, p *pki, certDir string) []string {
	return []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The endpoint reconciler refuses a loopback advertise address, and
		// nothing routes to the kubernetes Service here anyway.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(port),
		"--etcd-servers=" + etcdURL,
		"--cert-dir=" + certDir,
		"--tls-cert-file=" + p.servCert,
		"--tls-private-key-file=" + p.servKey,
		"--client-ca-file=" + p.caFile,
		"--token-auth-file=" + p.tokenFile,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=" + serviceAccountIssuer,
		"--service-account-key-file=" + p.saKey,
		"--service-account-signing-key-file=" + p.saKey,
		"--api-audiences=" + serviceAccountIssuer,
		"--service-cluster-ip-range=10.96.0.0/16",
		// No controller-manager runs, so nothing creates the "default"
		// ServiceAccount the ServiceAccount admission plugin insists on.
		// The default plugins stay on, MutatingAdmissionWebhook among them:
		// istiod's sidecar injector (controlplane) depends on it.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--profiling=false",
		// Priority and fairness only adds bootstrap objects and start-up
		// work; a single-client sandbox does not need it.
		"--enable-priority-and-fairness=false",
		"--shutdown-delay-duration=0s",
		"--v=0",
	}
}

// startAPIServer launches kube-apiserver. It does not wait for readiness.
func startAPIServer(binary, logPath string, args []string, port int) (*apiserverProc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open kube-apiserver log: %w", err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start kube-apiserver %s: %w", binary, err)
	}
	a := &apiserverProc{cmd: cmd, logFile: logFile, logPath: logPath, port: port, done: make(chan struct{})}
	go func() {
		a.exitErr = cmd.Wait()
		close(a.done)
	}()
	return a, nil
}

func (a *apiserverProc) exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// exitedWithAddrInUse reports whether the process died because its port
// was taken, judging by the tail of its log.
func (a *apiserverProc) exitedWithAddrInUse() bool {
	if !a.exited() {
		return false
	}
	return isAddrInUse(string(tailFile(a.logPath, 8192)))
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs. Idempotent.
func (a *apiserverProc) stop(grace time.Duration) error {
	a.stopOnce.Do(func() {
		defer a.logFile.Close()
		if a.exited() {
			return
		}
		if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			a.stopErr = fmt.Errorf("send SIGTERM to kube-apiserver (pid %d): %w", a.cmd.Process.Pid, err)
		}
		select {
		case <-a.done:
			return
		case <-time.After(grace):
		}
		if err := a.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			a.stopErr = fmt.Errorf("kill kube-apiserver (pid %d): %w", a.cmd.Process.Pid, err)
			return
		}
		<-a.done
	})
	return a.stopErr
}

// tailFile returns up to n bytes from the end of a file, for error messages.
func tailFile(path string, n int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	off := fi.Size() - n
	if off < 0 {
		off = 0
	}
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return nil
	}
	if i := bytes.IndexByte(buf, '\n'); off > 0 && i >= 0 {
		buf = buf[i+1:]
	}
	return buf
}
