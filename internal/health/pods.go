package health

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

// PodCheck watches the readiness and restarts of a namespace's pods through
// the soak. Kubelet probes that STRICT breaks (an HTTP readiness probe sent
// in plaintext to an app port, without Istio's probe rewrite) fail after
// their failureThreshold, not at once: a pod going NotReady or restarting
// during the soak fails the stage.
type PodCheck struct {
	Client    kubernetes.Interface
	Namespace string
	before    map[types.UID]podState
}

type podState struct {
	name     string
	ready    bool
	restarts int32
}

// PodCheckName is the name pod health is reported under.
const PodCheckName = "pods-ready"

// NewPodCheck records the namespace's pods as they are before the change.
func NewPodCheck(ctx context.Context, c kubernetes.Interface, namespace string) (*PodCheck, error) {
	pc := &PodCheck{Client: c, Namespace: namespace}
	pods, err := pc.list(ctx)
	if err != nil {
		return nil, err
	}
	pc.before = pods
	return pc, nil
}

func (p *PodCheck) list(ctx context.Context) (map[types.UID]podState, error) {
	list, err := p.Client.CoreV1().Pods(p.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods in %q: %w", p.Namespace, err)
	}
	out := map[types.UID]podState{}
	for i := range list.Items {
		pod := &list.Items[i]
		// Pods being deleted or finished (Job pods) are not health signals.
		if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		st := podState{name: pod.Name}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady {
				st.ready = c.Status == corev1.ConditionTrue
			}
		}
		for _, cs := range pod.Status.ContainerStatuses {
			st.restarts += cs.RestartCount
		}
		for _, cs := range pod.Status.InitContainerStatuses {
			st.restarts += cs.RestartCount // native sidecars (istio-proxy) are init containers
		}
		out[pod.UID] = st
	}
	return out, nil
}

// Settings are a zero gate named PodCheckName and no baseline: pod health
// has no threshold or minimum of samples (a Failed result fails the stage,
// K errors in a row do), and what it compares with is the pods recorded by
// NewPodCheck, not a measured value.
func (p *PodCheck) Settings() (plans.Gate, *Baseline) { return plans.Gate{Name: PodCheckName}, nil }

// Check compares the pods with the ones recorded before the change: a pod
// that was Ready and is not, or restarted, fails; so does a pod created
// since that has restarted.
func (p *PodCheck) Check(ctx context.Context, _ time.Time) Result {
	r := Result{Gate: PodCheckName, Threshold: 0, Samples: math.NaN()}
	now, err := p.list(ctx)
	if err != nil {
		r.Verdict, r.Value, r.Message = Error, math.NaN(), err.Error()
		return r
	}
	var bad []string
	for uid, st := range now {
		old, existed := p.before[uid]
		switch {
		case existed && old.ready && !st.ready:
			bad = append(bad, st.name+" became NotReady")
		case existed && st.restarts > old.restarts:
			bad = append(bad, fmt.Sprintf("%s restarted (%d→%d)", st.name, old.restarts, st.restarts))
		case !existed && st.restarts > 0:
			bad = append(bad, fmt.Sprintf("%s (new) restarted %d times", st.name, st.restarts))
		}
	}
	sort.Strings(bad)
	r.Value = float64(len(bad))
	if len(bad) > 0 {
		r.Verdict = Failed
		r.Message = strings.Join(bad, "; ")
		return r
	}
	r.Verdict = Successful
	r.Message = fmt.Sprintf("%d pods, none became NotReady or restarted", len(now))
	return r
}
