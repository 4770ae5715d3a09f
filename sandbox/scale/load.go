package scale

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// LoadOptions say how Load writes the world.
type LoadOptions struct {
	// Workers is the number of requests in flight (1: one at a time, as
	// the sandbox's own scenario loader does).
	Workers int
	// QPS and Burst are client-go's client-side rate limit; QPS < 0 turns
	// it off.
	QPS   float32
	Burst int
	// Protobuf sends and accepts Kubernetes' protobuf encoding instead of
	// JSON.
	Protobuf bool
	// StatusPatch writes each pod's status with a JSON merge patch of the
	// status alone instead of an update of the whole pod.
	StatusPatch bool
	// ServicesInEtcd writes the Services (and the IPAddress objects that
	// hold their ClusterIPs) straight into etcd, as another API server
	// would, in the API server's storage encoding, instead of through the
	// API: kube-apiserver 1.37 lists every allocated IPAddress twice in each
	// ClusterIP allocation (ipallocator.Allocator.Used, for a metric), so a
	// create costs it time in proportion to the Services already there:
	// 169 Services/s at first, 28/s at 10,000. The first Service of each
	// kind is created through the API and the others must read back with
	// the same spec (Load checks). Needs Etcd.
	ServicesInEtcd bool
	Etcd           *clientv3.Client
	// Deadline, when set, stops the load after that long (the serial
	// baseline at 2,000 namespaces takes most of an hour); the stats then
	// cover what was written.
	Deadline time.Duration
	// Progress, when set, is called every tenth of each kind's objects.
	Progress func(kind string, done, total int, elapsed time.Duration)
}

// Baseline is how the sandbox's scenario loader writes objects: one
// request at a time, JSON, 200 QPS.
var Baseline = LoadOptions{Workers: 1, QPS: 200, Burst: 400}

// Fast is the tuned load: a bounded pool of concurrent requests, no
// client-side rate limit, protobuf, and the Services written into etcd
// (see ServicesInEtcd: through the API they make the load quadratic).
// The API server's CPU is what limits the rest (about 6 ms a pod: create,
// status update, managed fields); a status merge patch costs the server
// more than an update of the object it just returned (it encodes the
// stored pod to JSON to apply the patch), so the status is an update
// (BenchmarkLoad compares them).
var Fast = LoadOptions{Workers: 16, QPS: -1, Protobuf: true, ServicesInEtcd: true}

// LoadStats is what a load took.
type LoadStats struct {
	Options        LoadOptions `json:"-"`
	Took           time.Duration
	Namespaces     int
	Services, Pods int // written (pods: created and their status set)
	Requests       int
	Complete       bool // everything was written (no deadline hit)
	ServicesPerSec float64
	ObjectsPerSec  float64 // namespaces, Services, pods (a pod with its status counts once)
	Phases         []PhaseStats
	// APIServerCPU is the kube-apiserver's CPU time during the load;
	// LocalCPU this process's (the loader and the embedded etcd); both 0
	// when unknown. APIServerRSS is its resident set after the load.
	APIServerCPU, LocalCPU time.Duration
	APIServerRSS           int64
}

func (s *LoadStats) String() string {
	mode := fmt.Sprintf("workers=%d qps=%g protobuf=%t status-patch=%t services-in-etcd=%t", s.Options.Workers, s.Options.QPS, s.Options.Protobuf, s.Options.StatusPatch, s.Options.ServicesInEtcd)
	partial := ""
	if !s.Complete {
		partial = " (stopped at the deadline)"
	}
	var phases []string
	for _, p := range s.Phases {
		phases = append(phases, p.String())
	}
	return fmt.Sprintf("%s: %d namespaces, %d Services, %d pods in %s%s: %.0f objects/s, %.0f Services/s [%s]; CPU: apiserver %s, etcd+loader %s; apiserver RSS %d MB",
		mode, s.Namespaces, s.Services, s.Pods, s.Took.Round(100*time.Millisecond), partial, s.ObjectsPerSec, s.ServicesPerSec, strings.Join(phases, "; "),
		s.APIServerCPU.Round(100*time.Millisecond), s.LocalCPU.Round(100*time.Millisecond), s.APIServerRSS>>20)
}

// Load writes the world's namespaces, Services and pods (Running, with
// their status) through the API server at cfg, and stateNamespace if not
// empty.
func Load(ctx context.Context, base *rest.Config, w *World, stateNamespace string, o LoadOptions) (*LoadStats, error) {
	cfg := rest.CopyConfig(base)
	cfg.QPS, cfg.Burst = o.QPS, o.Burst
	if o.Protobuf {
		cfg.ContentType = runtime.ContentTypeProtobuf
		cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("build the loader's client: %w", err)
	}
	workers := max(1, o.Workers)
	if o.Deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Deadline)
		defer cancel()
	}
	st := &LoadStats{Options: o}
	var requests atomic.Int64
	began := time.Now()

	// Namespaces first: everything else lives in them.
	nsJobs := make([]func(context.Context) error, 0, len(w.Names)+1)
	if stateNamespace != "" {
		nsJobs = append(nsJobs, func(ctx context.Context) error {
			requests.Add(1)
			_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: stateNamespace}}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return nil
			}
			return err
		})
	}
	for i := range w.Names {
		nsJobs = append(nsJobs, func(ctx context.Context) error {
			requests.Add(1)
			_, err := kube.CoreV1().Namespaces().Create(ctx, w.Namespace(i), metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("create namespace %s: %w", w.Names[i], err)
			}
			return nil
		})
	}
	var nsDone atomic.Int64
	err = runPool(ctx, workers, nsJobs, func() { nsDone.Add(1) })
	st.Namespaces = int(nsDone.Load())
	if stateNamespace != "" && st.Namespaces > 0 {
		st.Namespaces--
	}
	if err != nil {
		return finish(st, w, began, requests.Load()), deadlineOK(ctx, err)
	}

	// Then the Services, then the pods with their status: apart, so each
	// kind's rate shows (a Service costs the API server more with every
	// Service there is, see Fast).
	var svcJobs, podJobs []func(context.Context) error
	for i := range w.Names {
		for j := 0; j < w.Opts.Workloads; j++ {
			svcJobs = append(svcJobs, func(ctx context.Context) error {
				requests.Add(1)
				if _, err := kube.CoreV1().Services(w.Names[i]).Create(ctx, w.Service(i, j), metav1.CreateOptions{}); err != nil {
					return fmt.Errorf("create Service %s/%s: %w", w.Names[i], w.wlNames[j], err)
				}
				return nil
			})
			podJobs = append(podJobs, func(ctx context.Context) error {
				requests.Add(1)
				created, err := kube.CoreV1().Pods(w.Names[i]).Create(ctx, w.Pod(i, j), metav1.CreateOptions{})
				if err != nil {
					return fmt.Errorf("create pod %s/%s: %w", w.Names[i], w.PodName(i, j), err)
				}
				status := w.PodStatus(i, j, created, began)
				requests.Add(1)
				if o.StatusPatch {
					patch, err := json.Marshal(map[string]any{"status": status})
					if err != nil {
						return err
					}
					_, err = kube.CoreV1().Pods(w.Names[i]).Patch(ctx, created.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
					if err != nil {
						return fmt.Errorf("set the status of pod %s/%s: %w", w.Names[i], created.Name, err)
					}
				} else {
					created.Status = status
					if _, err := kube.CoreV1().Pods(w.Names[i]).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
						return fmt.Errorf("set the status of pod %s/%s: %w", w.Names[i], created.Name, err)
					}
				}
				return nil
			})
		}
	}
	for _, ph := range []struct {
		name string
		jobs []func(context.Context) error
		n    *int
	}{{"Services", svcJobs, &st.Services}, {"pods", podJobs, &st.Pods}} {
		if ph.name == "Services" && o.ServicesInEtcd {
			ps, err := servicesInEtcd(ctx, kube, o.Etcd, w)
			st.Phases = append(st.Phases, ps)
			st.Services = ps.Done
			requests.Add(int64(ps.Requests))
			if err != nil {
				return finish(st, w, began, requests.Load()), err
			}
			continue
		}
		ps, err := runPhase(ctx, ph.name, workers, ph.jobs, o.Progress)
		st.Phases = append(st.Phases, ps)
		*ph.n = ps.Done
		if err != nil {
			return finish(st, w, began, requests.Load()), deadlineOK(ctx, err)
		}
	}
	return finish(st, w, began, requests.Load()), nil
}

// PhaseStats is one kind's part of a load.
type PhaseStats struct {
	Kind string
	Done int
	Took time.Duration
	// Requests are API requests beyond one an object (a bulk write's).
	Requests int
	// FirstTenth and LastTenth are objects per second over the first and
	// the last tenth of the objects.
	FirstTenth, LastTenth float64
}

func (p PhaseStats) String() string {
	return fmt.Sprintf("%d %s in %s (%.0f/s: first tenth %.0f/s, last %.0f/s)", p.Done, p.Kind, p.Took.Round(100*time.Millisecond),
		float64(p.Done)/p.Took.Seconds(), p.FirstTenth, p.LastTenth)
}

func runPhase(ctx context.Context, kind string, workers int, jobs []func(context.Context) error, progress func(string, int, int, time.Duration)) (PhaseStats, error) {
	began := time.Now()
	var mu sync.Mutex
	done := make([]time.Duration, 0, len(jobs))
	step := max(1, len(jobs)/10)
	err := runPool(ctx, workers, jobs, func() {
		mu.Lock()
		done = append(done, time.Since(began))
		n := len(done)
		mu.Unlock()
		if progress != nil && n%step == 0 {
			progress(kind, n, len(jobs), time.Since(began))
		}
	})
	ps := PhaseStats{Kind: kind, Done: len(done), Took: time.Since(began)}
	if n := len(done); n >= 20 {
		tenth := n / 10
		ps.FirstTenth = float64(tenth) / done[tenth-1].Seconds()
		ps.LastTenth = float64(tenth) / (done[n-1] - done[n-1-tenth]).Seconds()
	}
	return ps, err
}

// deadlineOK turns the load's own deadline into a partial result.
func deadlineOK(ctx context.Context, err error) error {
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil
	}
	return err
}

func finish(st *LoadStats, w *World, began time.Time, requests int64) *LoadStats {
	st.Took = time.Since(began)
	st.Requests = int(requests)
	st.Complete = st.Namespaces == len(w.Names) && st.Services == w.Pods() && st.Pods == w.Pods()
	secs := st.Took.Seconds()
	st.ServicesPerSec = float64(st.Services) / secs
	st.ObjectsPerSec = float64(st.Namespaces+st.Services+st.Pods) / secs
	return st
}

// runPool runs jobs on n workers in order of the slice; the first error
// stops the rest.
func runPool(ctx context.Context, n int, jobs []func(context.Context) error, done func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan func(context.Context) error)
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for k := 0; k < n; k++ {
		wg.Go(func() {
			for job := range next {
				if err := job(ctx); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					continue
				}
				done()
			}
		})
	}
	for _, job := range jobs {
		select {
		case next <- job:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return firstErr
}
