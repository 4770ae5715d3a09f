package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream" //nolint:staticcheck // client-go v0.37 returns its errors
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// curl exit codes that mean the server refused or dropped the plaintext
// connection (curl(1) "EXIT CODES"): 7 failed to connect, 52 empty reply,
// 56 failure receiving network data (connection reset).
var curlRefused = map[int]bool{7: true, 52: true, 56: true}

// CurlCommand is the default exec probe command: curl prints only the
// status code, like the Online Boutique checks' `kubectl exec testcurl --
// curl ...`.
func CurlCommand(pr plans.Probe, timeout time.Duration) []string {
	secs := int(timeout.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	cmd := []string{"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", strconv.Itoa(secs)}
	if pr.Resolve != "" {
		cmd = append(cmd, "--resolve", pr.Resolve)
	}
	return append(cmd, pr.URL)
}

func (p *Prober) execOnce(ctx context.Context, pr plans.Probe) Observation {
	if p.Exec == nil {
		return Observation{Err: errors.New("exec probes need a cluster connection")}
	}
	ns, pod := p.Namespace, pr.Pod
	if a, b, ok := strings.Cut(pr.Pod, "/"); ok {
		ns, pod = a, b
	}
	// Only the default command: plans (validated) carry none of their own.
	cmd := CurlCommand(pr, p.Timeout)
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	// The command bounds itself (curl --max-time); the extra time covers
	// the exec round trip through the API server.
	ctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	out, code, err := p.Exec.Exec(ctx, ns, pod, pr.Container, cmd)
	if err != nil {
		return Observation{Err: fmt.Errorf("exec in %s/%s: %w", ns, pod, err)}
	}
	if curlRefused[code] {
		return Observation{Refused: true, Err: fmt.Errorf("curl exit %d", code)}
	}
	status, convErr := strconv.Atoi(strings.TrimSpace(out))
	if code == 0 && convErr == nil && status >= 100 && status <= 599 {
		return Observation{Status: status}
	}
	return Observation{Err: fmt.Errorf("command exited %d with output %q", code, clip(strings.TrimSpace(out), 80))}
}

// KubeExec runs commands through the pods/exec subresource, over WebSocket
// with a fallback to SPDY for older API servers (as kubectl exec does).
type KubeExec struct {
	Config *rest.Config
	Client kubernetes.Interface
}

// Exec runs command and returns its stdout and exit code.
func (k *KubeExec) Exec(ctx context.Context, namespace, pod, container string, command []string) (string, int, error) {
	req := k.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: command, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(k.Config, http.MethodGet, req.URL().String())
	if err != nil {
		return "", 0, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(k.Config, http.MethodPost, req.URL())
	if err != nil {
		return "", 0, err
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		// client-go v0.37 executors still return apimachinery httpstream errors.
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err) //nolint:staticcheck // see above
	})
	if err != nil {
		return "", 0, err
	}
	// The answer is a status code: whatever a pod prints beyond a few KiB
	// is not kept (it would end up in logs, events and the state).
	stdout, stderr := &capped{max: maxExecOutput}, &capped{max: maxExecOutput}
	err = exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: stdout, Stderr: stderr})
	var exitErr utilexec.CodeExitError
	if errors.As(err, &exitErr) {
		return stdout.String(), exitErr.Code, nil
	}
	if err != nil {
		return stdout.String(), 0, fmt.Errorf("%w (stderr: %s)", err, clip(strings.TrimSpace(stderr.String()), 200))
	}
	return stdout.String(), 0, nil
}

// maxExecOutput bounds what an exec probe keeps of a pod's output.
const maxExecOutput = 4 << 10

// capped is a writer that keeps the first max bytes and drops the rest
// (never an error, so the stream is drained).
type capped struct {
	bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// clip shortens s to n bytes for messages.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
