package health

import (
	"context"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mtls-migrate/mtls-migrate/plans"
)

var nan = math.NaN()

func TestEvaluateEveryOutcome(t *testing.T) {
	success := plans.Gate{Name: "sr", Query: "q", Comparison: plans.GreaterOrEqual, Threshold: 0.01, Relative: plans.BaselineMinus, SamplesQuery: "s", MinSamples: 10}
	rate := plans.Gate{Name: "rate", Query: "q", Comparison: plans.GreaterOrEqual, Threshold: 0.8, Relative: plans.BaselineTimes}
	abs := plans.Gate{Name: "errs", Query: "q", Comparison: plans.Less, Threshold: 1}
	base := &Baseline{Value: 0.99, Samples: 100}
	tests := []struct {
		name string
		gate plans.Gate
		base *Baseline
		m    Measurement
		want Verdict
		msg  string
	}{
		{"success rate within tolerance", success, base, Measurement{Value: 0.985, Samples: 50}, Successful, ""},
		{"success rate below baseline minus tolerance", success, base, Measurement{Value: 0.90, Samples: 50}, Failed, "is not >="},
		{"too few requests", success, base, Measurement{Value: 0.5, Samples: 3}, Inconclusive, "not enough data: 3 samples, need 10"},
		{"no requests at all", success, base, Measurement{Value: nan, Samples: nan}, Inconclusive, "no samples"},
		{"NaN value with samples", success, base, Measurement{Value: nan, Samples: 50}, Error, "no data"},
		{"query error", success, base, Measurement{Err: errors.New("connection refused")}, Error, "query failed"},
		{"rate kept", rate, &Baseline{Value: 10, Samples: nan}, Measurement{Value: 9, Samples: nan}, Successful, ""},
		{"rate dropped", rate, &Baseline{Value: 10, Samples: nan}, Measurement{Value: 7, Samples: nan}, Failed, ""},
		{"rate vanished (no data)", rate, &Baseline{Value: 10, Samples: nan}, Measurement{Value: nan, Samples: nan}, Error, "never read as healthy"},
		{"relative gate without baseline", rate, &Baseline{Value: nan, Samples: nan}, Measurement{Value: 5, Samples: nan}, Inconclusive, "no baseline"},
		{"absolute pass", abs, nil, Measurement{Value: 0, Samples: nan}, Successful, ""},
		{"absolute fail", abs, nil, Measurement{Value: 3, Samples: nan}, Failed, ""},
		{"infinite value", abs, nil, Measurement{Value: math.Inf(1), Samples: nan}, Error, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Evaluate(tt.gate, tt.base, tt.m)
			if r.Verdict != tt.want || !strings.Contains(r.Message, tt.msg) {
				t.Fatalf("got %s %q, want %s containing %q", r.Verdict, r.Message, tt.want, tt.msg)
			}
		})
	}
}

func TestTrackerConsecutiveErrorsFailAfterK(t *testing.T) {
	tr := &Tracker{Gate: plans.Gate{Name: "g"}, MaxConsecutiveErrors: 3}
	seq := []Verdict{Error, Error, Successful, Error, Error, Inconclusive, Error}
	for i, v := range seq {
		f, _ := tr.Observe(Result{Gate: "g", Verdict: v})
		if f != (i == len(seq)-1) {
			t.Fatalf("step %d (%s): failed=%v", i, v, f)
		}
	}
}

// TestTrackerVanishingSamples: minSamples is applied to the baseline, not to
// the proof of loss. A gate whose baseline had enough samples fails after K
// (MaxConsecutiveErrors) measurements in a row with too few, whatever came
// before, and at the end of a soak that ends in such a run; one whose
// baseline had too few never fails for it.
func TestTrackerVanishingSamples(t *testing.T) {
	g := plans.Gate{Name: "g", MinSamples: 10}
	ok := Result{Gate: "g", Verdict: Successful, Samples: 50}
	few := Result{Gate: "g", Verdict: Inconclusive, Samples: 3, Message: "not enough data: 3 samples, need 10"}
	zero := Result{Gate: "g", Verdict: Inconclusive, Samples: 0, Message: "not enough data: 0 samples, need 10"}
	none := Result{Gate: "g", Verdict: Inconclusive, Samples: nan, Message: "not enough data: no samples behind the gate (need 10)"}
	errNaN := Result{Gate: "g", Verdict: Error, Samples: 50, Message: "no data (empty result or NaN): never read as healthy"}
	noBase := Result{Gate: "g", Verdict: Inconclusive, Samples: 50, Message: "no baseline"}
	had, thin := &Baseline{Value: 1, Samples: 100}, &Baseline{Value: 1, Samples: 3}
	tests := []struct {
		name     string
		baseline *Baseline
		seq      []Result
		failAt   int // index of the result that fails the gate; -1 none
		finish   bool
		reason   string
	}{
		{"few samples after a judged tick fail after K", had, []Result{ok, few, few, few}, 3, false, "not enough samples to judge in 3 consecutive measurements"},
		{"no data (NaN samples) after a judged tick fails after K", had, []Result{ok, none, none, none}, 3, false, "although the baseline had 100: the traffic it watches vanished"},
		{"zero samples after a judged tick fail after K", had, []Result{ok, ok, zero, zero, zero}, 4, false, "0 samples"},
		{"recovery resets the count", had, []Result{ok, few, few, ok, few, few, ok}, -1, false, ""},
		{"errors neither reset nor extend the run", had, []Result{ok, few, errNaN, few, few}, 4, false, "3 consecutive measurements"},
		{"soak ending in a short run of few samples fails at the end", had, []Result{ok, ok, few}, -1, true, "the last 1 measurement(s) of the soak"},
		{"inconclusive throughout fails at the end", had, []Result{none, none}, -1, true, "the last 2 measurement(s)"},
		{"inconclusive for another reason throughout fails at the end", had, []Result{noBase, noBase, noBase}, -1, true, "the whole soak"},
		{"NaN value with samples is an error: fails after K errors", had, []Result{ok, errNaN, errNaN, errNaN}, 3, false, "3 consecutive errors"},
		{"baseline with too few samples: few samples never fail", thin, []Result{ok, few, few, few, few}, -1, false, ""},
		{"baseline with NaN samples: no data never fails", &Baseline{Value: nan, Samples: nan}, []Result{none, none, none, none}, -1, false, ""},
		{"no baseline: few samples never fail", nil, []Result{few, few, few, few}, -1, false, ""},
		{"healthy throughout", had, []Result{ok, ok, ok}, -1, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &Tracker{Gate: g, Baseline: tt.baseline, MaxConsecutiveErrors: 3}
			failedAt, reason := -1, ""
			for i, r := range tt.seq {
				if f, why := tr.Observe(r); f {
					failedAt, reason = i, why
					break
				}
			}
			if failedAt != tt.failAt {
				t.Fatalf("failed at %d (%q), want %d", failedAt, reason, tt.failAt)
			}
			if failedAt < 0 {
				f, why := tr.Finish()
				if f != tt.finish {
					t.Fatalf("Finish() = %v (%q), want %v", f, why, tt.finish)
				}
				reason = why
			}
			if !strings.Contains(reason, tt.reason) {
				t.Fatalf("reason %q, want it to contain %q", reason, tt.reason)
			}
		})
	}
}

// fakeClock advances instantly.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }
func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.now = c.now.Add(d)
	return ctx.Err()
}

// fakeProm answers queries from a function of the time, with warns (if
// any) on every answer.
type fakeProm struct {
	answer func(q string, ts time.Time) (model.Value, error)
	warns  v1.Warnings
}

func (f *fakeProm) Query(_ context.Context, q string, ts time.Time, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	v, err := f.answer(q, ts)
	return v, f.warns, nil, err
}

func (f *fakeProm) QueryRange(context.Context, string, v1.Range, ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return nil, nil, nil, errors.New("gates make no range queries")
}

func vec(v float64) model.Value { return model.Vector{&model.Sample{Value: model.SampleValue(v)}} }

func TestRunnerSoak(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	gate := plans.Gate{Name: "sr", Query: "q", Comparison: plans.GreaterOrEqual, Threshold: 0.9}
	tests := []struct {
		name    string
		answer  func(q string, ts time.Time) (model.Value, error)
		healthy bool
		reason  string
		ticks   int
	}{
		{"healthy through the soak", func(string, time.Time) (model.Value, error) { return vec(1), nil }, true, "", 7},
		{"fails at the third minute", func(_ string, ts time.Time) (model.Value, error) {
			if ts.Sub(start) >= 3*time.Minute {
				return vec(0.5), nil
			}
			return vec(1), nil
		}, false, "gate sr failed", 4},
		{"prometheus down fails after 3 tries, never done", func(string, time.Time) (model.Value, error) {
			return nil, errors.New("dial tcp: connection refused")
		}, false, "3 consecutive errors", 3},
		{"no data fails after 3 tries", func(string, time.Time) (model.Value, error) { return model.Vector{}, nil }, false, "no data", 3},
		{"NaN fails after 3 tries", func(string, time.Time) (model.Value, error) { return vec(nan), nil }, false, "no data", 3},
		{"two series is an error", func(string, time.Time) (model.Value, error) {
			return model.Vector{&model.Sample{Value: 1}, &model.Sample{Value: 1}}, nil
		}, false, "more than one series", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &fakeClock{now: start}
			ticks := 0
			r := &Runner{
				Checks:               []Check{&PromGate{Gate: gate, Querier: &fakeProm{answer: tt.answer}}},
				Interval:             time.Minute,
				MaxConsecutiveErrors: 3,
				Clock:                clk,
				OnTick:               func(Tick) { ticks++ },
			}
			out := r.Soak(context.Background(), 6*time.Minute)
			if out.Healthy != tt.healthy || !strings.Contains(out.Reason, tt.reason) || ticks != tt.ticks {
				t.Fatalf("got healthy=%v reason=%q ticks=%d", out.Healthy, out.Reason, ticks)
			}
		})
	}
}

// TestQueryValueNeverReadsAnOddAnswerAsData: a warning (partial answer), no
// value at all, or a result of another type is an error, never "no data"
// and never a value.
func TestQueryValueNeverReadsAnOddAnswerAsData(t *testing.T) {
	partial := v1.Warnings{"store gateway eu-1 did not answer: partial response"}
	tests := []struct {
		name   string
		value  model.Value
		warns  v1.Warnings
		want   float64 // when no error
		errMsg string  // "" for no error
	}{
		{"one sample", vec(0.99), nil, 0.99, ""},
		{"scalar", &model.Scalar{Value: 2}, nil, 2, ""},
		{"empty vector is no data", model.Vector{}, nil, nan, ""},
		{"NaN sample is NaN", vec(nan), nil, nan, ""},
		{"warnings with a value", vec(0.99), partial, 0, "answered with warnings, so the answer may be partial: store gateway eu-1 did not answer"},
		{"warnings with no data", model.Vector{}, partial, 0, "partial response"},
		{"matrix", model.Matrix{&model.SampleStream{Values: []model.SamplePair{{Value: 1}}}}, nil, 0, "answered with a matrix, not an instant vector or a scalar"},
		{"string", &model.String{Value: "1"}, nil, 0, "answered with a string"},
		{"no value at all", nil, nil, 0, "answered with no value"},
		{"two series", model.Vector{&model.Sample{Value: 1}, &model.Sample{Value: 1}}, nil, 0, "more than one series"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := &fakeProm{answer: func(string, time.Time) (model.Value, error) { return tt.value, nil }, warns: tt.warns}
			got, err := QueryValue(context.Background(), q, "q", time.Time{}, 0)
			switch {
			case tt.errMsg == "" && err != nil:
				t.Fatalf("error %v, want %v", err, tt.want)
			case tt.errMsg == "" && !(got == tt.want || math.IsNaN(got) && math.IsNaN(tt.want)):
				t.Fatalf("got %v, want %v", got, tt.want)
			case tt.errMsg != "" && (err == nil || !strings.Contains(err.Error(), tt.errMsg) || !math.IsNaN(got)):
				t.Fatalf("got %v, %v; want NaN and an error containing %q", got, err, tt.errMsg)
			}
		})
	}
}

// TestRunnerPartialAnswersAreErrors: a gate answered with warnings is an
// Error naming the warning, and K of them in a row fail the soak.
func TestRunnerPartialAnswersAreErrors(t *testing.T) {
	gate := plans.Gate{Name: "sr", Query: "q", Comparison: plans.GreaterOrEqual, Threshold: 0.9}
	prom := &fakeProm{answer: func(string, time.Time) (model.Value, error) { return vec(1), nil }, warns: v1.Warnings{"partial response: 1 of 3 shards"}}
	var results []Result
	r := &Runner{
		Checks:   []Check{&PromGate{Gate: gate, Querier: prom}},
		Interval: time.Minute, MaxConsecutiveErrors: 3, Clock: &fakeClock{},
		OnTick: func(tk Tick) { results = append(results, tk.Results...) },
	}
	out := r.Soak(context.Background(), 6*time.Minute)
	if out.Healthy || !strings.Contains(out.Reason, "3 consecutive errors") || !strings.Contains(out.Reason, "partial response: 1 of 3 shards") {
		t.Fatalf("got healthy=%v reason=%q", out.Healthy, out.Reason)
	}
	for _, res := range results {
		if res.Verdict != Error {
			t.Fatalf("a partial answer was judged %s: %+v", res.Verdict, res)
		}
	}
}

// TestRunnerJudgesEachCheckByItsOwnSettings: the Runner takes a check's
// gate and baseline from the check alone (no maps by name).
func TestRunnerJudgesEachCheckByItsOwnSettings(t *testing.T) {
	gate := plans.Gate{Name: "rate", Query: "q", Comparison: plans.GreaterOrEqual, Threshold: 1, SamplesQuery: "s", MinSamples: 10}
	noRequests := func(q string, _ time.Time) (model.Value, error) {
		if q == "s" {
			return vec(0), nil
		}
		return vec(5), nil
	}
	tests := []struct {
		name     string
		baseline *Baseline
		healthy  bool
		reason   string
	}{
		{"baseline had requests: vanished traffic fails", &Baseline{Value: 5, Samples: 100}, false, "gate rate: not enough samples to judge in 3 consecutive measurements (not enough data: 0 samples, need 10), although the baseline had 100"},
		{"baseline had none: inconclusive throughout is not a failure", &Baseline{Value: nan, Samples: nan}, true, ""},
		{"no baseline", nil, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Runner{
				Checks:   []Check{&PromGate{Gate: gate, Baseline: tt.baseline, Querier: &fakeProm{answer: noRequests}}},
				Interval: time.Minute, MaxConsecutiveErrors: 3, Clock: &fakeClock{},
			}
			out := r.Soak(context.Background(), 3*time.Minute)
			if out.Healthy != tt.healthy || !strings.Contains(out.Reason, tt.reason) {
				t.Fatalf("got healthy=%v reason=%q", out.Healthy, out.Reason)
			}
		})
	}
}

// TestRunnerFailsWhenTrafficVanishesAfterTheFirstTick: the quiet namespace
// whose every client STRICT cuts off. The first tick still sees the
// requests from before the change (Successful); then the samples fall to
// zero and the gate must fail, not pass because it was judged once.
func TestRunnerFailsWhenTrafficVanishesAfterTheFirstTick(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	gate := plans.Gate{Name: "inbound-request-rate", Query: "q", Comparison: plans.GreaterOrEqual, Threshold: 0.8, Relative: plans.BaselineTimes, SamplesQuery: "s", MinSamples: 10}
	answer := func(q string, ts time.Time) (model.Value, error) {
		if ts.After(start) { // cut off after the first tick: no requests, rate 0
			return vec(0), nil
		}
		if q == "s" {
			return vec(40), nil
		}
		return vec(2), nil
	}
	var verdicts []Verdict
	r := &Runner{
		Checks:   []Check{&PromGate{Gate: gate, Baseline: &Baseline{Value: 2, Samples: 40}, Querier: &fakeProm{answer: answer}}},
		Interval: time.Minute, MaxConsecutiveErrors: 3, Clock: &fakeClock{now: start},
		OnTick: func(tk Tick) { verdicts = append(verdicts, tk.Results[0].Verdict) },
	}
	out := r.Soak(context.Background(), 10*time.Minute)
	if out.Healthy || !strings.Contains(out.Reason, "the traffic it watches vanished") {
		t.Fatalf("got healthy=%v reason=%q verdicts %v", out.Healthy, out.Reason, verdicts)
	}
	if want := []Verdict{Successful, Inconclusive, Inconclusive, Inconclusive}; !reflect.DeepEqual(verdicts, want) {
		t.Fatalf("verdicts %v, want %v", verdicts, want)
	}
}

func TestPodCheckHasAZeroGateAndNoBaseline(t *testing.T) {
	g, b := (&PodCheck{}).Settings()
	if !reflect.DeepEqual(g, plans.Gate{Name: PodCheckName}) || b != nil {
		t.Fatalf("Settings() = %+v, %v", g, b)
	}
}

func TestRunnerInterruptedIsNotHealthy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := &Runner{Checks: []Check{&PromGate{Gate: plans.Gate{Name: "g", Query: "q", Comparison: plans.Less, Threshold: 1}, Querier: &fakeProm{answer: func(string, time.Time) (model.Value, error) { return vec(0), nil }}}}, Interval: time.Second, Clock: &fakeClock{}, MaxConsecutiveErrors: 3}
	if out := r.Soak(ctx, time.Minute); out.Healthy || out.Err == nil {
		t.Fatalf("interrupted soak reported %+v", out)
	}
}

func pod(name string, uid string, ready bool, restarts int32) *corev1.Pod {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "cart", UID: typesUID(uid)},
		Status: corev1.PodStatus{
			Phase:             corev1.PodRunning,
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: st}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", RestartCount: restarts}},
		},
	}
}

func TestPodCheck(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		after []*corev1.Pod
		want  Verdict
		msg   string
	}{
		{"unchanged", []*corev1.Pod{pod("a", "1", true, 0), pod("b", "2", false, 1)}, Successful, ""},
		{"became NotReady", []*corev1.Pod{pod("a", "1", false, 0), pod("b", "2", false, 1)}, Failed, "a became NotReady"},
		{"restarted", []*corev1.Pod{pod("a", "1", true, 0), pod("b", "2", false, 2)}, Failed, "b restarted (1→2)"},
		{"new pod restarting", []*corev1.Pod{pod("a", "1", true, 0), pod("c", "3", false, 1)}, Failed, "c (new) restarted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.NewClientset(pod("a", "1", true, 0), pod("b", "2", false, 1))
			pc, err := NewPodCheck(ctx, c, "cart")
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"a", "b"} {
				_ = c.CoreV1().Pods("cart").Delete(ctx, p, metav1.DeleteOptions{})
			}
			for _, p := range tt.after {
				if _, err := c.CoreV1().Pods("cart").Create(ctx, p, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			r := pc.Check(ctx, time.Now())
			if r.Verdict != tt.want || !strings.Contains(r.Message, tt.msg) {
				t.Fatalf("got %s %q", r.Verdict, r.Message)
			}
		})
	}
}

func typesUID(s string) types.UID { return types.UID(s) }
