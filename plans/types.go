package plans

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// APIVersion and Kind identify the plan document.
const (
	APIVersion = "mtls-migrate.io/v1alpha1"
	Kind       = "MigrationPlan"
)

// Plan is a staged migration plan: one namespace per stage, the mesh-wide
// policy last. Field order here is the order fields are written in.
type Plan struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	Stages     []Stage  `yaml:"stages" json:"stages"`
}

// Metadata records what the plan was built from, so apply can refuse a plan
// that no longer matches the cluster.
type Metadata struct {
	Name          string    `yaml:"name" json:"name"`
	GeneratedAt   time.Time `yaml:"generatedAt" json:"generatedAt"`
	Window        Duration  `yaml:"window" json:"window"`
	PrometheusURL string    `yaml:"prometheusURL,omitempty" json:"prometheusURL,omitempty"`
	ClusterServer string    `yaml:"clusterServer,omitempty" json:"clusterServer,omitempty"`
	RootNamespace string    `yaml:"rootNamespace" json:"rootNamespace"`
	IstioVersion  string    `yaml:"istioVersion,omitempty" json:"istioVersion,omitempty"`
	// AutoMTLS mirrors meshConfig.enableAutoMtls; nil when it could not be read.
	AutoMTLS *bool `yaml:"autoMTLS,omitempty" json:"autoMTLS,omitempty"`
	// Queries are the PromQL queries the evidence came from, for review.
	Queries []string `yaml:"queries,omitempty" json:"queries,omitempty"`
	// ConfigDigest is a digest of every PeerAuthentication and DestinationRule
	// the planner saw (see Stage.PolicyDigest for the per-namespace one).
	ConfigDigest string `yaml:"configDigest,omitempty" json:"configDigest,omitempty"`
	// Warnings say what the evidence may lack: Prometheus warnings or
	// partial answers, objects the planner could not read.
	Warnings []string `yaml:"warnings,omitempty" json:"warnings,omitempty"`
}

// Scope says what a stage's policy covers.
type Scope string

// Scopes.
const (
	ScopeNamespace Scope = "namespace"
	ScopeMesh      Scope = "mesh"
)

// Status is the planner's verdict on a stage.
type Status string

// Statuses.
const (
	StatusReady       Status = "ready"
	StatusBlocked     Status = "blocked"
	StatusNeedsReview Status = "needs-review"
)

// Mode is an Istio PeerAuthentication mTLS mode.
type Mode string

// Modes, as spelled in security.istio.io PeerAuthentication.
const (
	ModeUnset      Mode = "UNSET"
	ModeDisable    Mode = "DISABLE"
	ModePermissive Mode = "PERMISSIVE"
	ModeStrict     Mode = "STRICT"
)

// Stage moves one namespace (or, for the last stage, the mesh) to a target mode.
type Stage struct {
	Number    int    `yaml:"number" json:"number"`
	Namespace string `yaml:"namespace" json:"namespace"`
	// Scope is "namespace" (the default when empty) or "mesh" for the
	// root-namespace stage.
	Scope  Scope  `yaml:"scope,omitempty" json:"scope,omitempty"`
	Status Status `yaml:"status" json:"status"`
	// Rationale says why the stage stands where it stands in the order.
	Rationale string `yaml:"rationale,omitempty" json:"rationale,omitempty"`
	// CurrentMode and TargetMode are the namespace-level effective modes
	// before and after the stage.
	CurrentMode Mode `yaml:"currentMode,omitempty" json:"currentMode,omitempty"`
	TargetMode  Mode `yaml:"targetMode" json:"targetMode"`
	// PolicyDigest says what the namespace's PeerAuthentications must be
	// when the stage starts; apply refuses the stage otherwise. Required, in
	// one of two forms: "sha256:<hex>", their digest when the plan was made
	// (peerauth.PolicyDigest), or "after-stage:N" (see AfterStage): exactly
	// what stage N, an earlier stage of this plan on the same namespace,
	// left, as the state recorded when N was done. The second form is for a
	// stage that follows another on its namespace (the STRICT stage of a
	// namespace that is DISABLE today comes after its PERMISSIVE stage): the
	// digest covers UIDs and creation times, which the planner cannot know
	// for objects an earlier stage has yet to write.
	PolicyDigest string       `yaml:"policyDigest" json:"policyDigest"`
	Evidence     Evidence     `yaml:"evidence" json:"evidence"`
	Modes        []ModeChange `yaml:"modes,omitempty" json:"modes,omitempty"`
	Risks        []Risk       `yaml:"risks,omitempty" json:"risks,omitempty"`
	Policy       Policy       `yaml:"policy" json:"policy"`
	Probes       []Probe      `yaml:"probes,omitempty" json:"probes,omitempty"`
	Gates        []Gate       `yaml:"gates,omitempty" json:"gates,omitempty"`
	Soak         Duration     `yaml:"soak" json:"soak"`
}

// afterStagePrefix begins a policyDigest that names an earlier stage.
const afterStagePrefix = "after-stage:"

// AfterStage is the policyDigest of a stage that must find its namespace's
// PeerAuthentications exactly as stage n of the same plan left them.
func AfterStage(n int) string { return afterStagePrefix + strconv.Itoa(n) }

// PolicyAfterStage returns N when the stage's policyDigest is
// "after-stage:N" (N a positive number written without sign or leading
// zeros), and false for any other value.
func (s *Stage) PolicyAfterStage() (int, bool) {
	rest, ok := strings.CutPrefix(s.PolicyDigest, afterStagePrefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 1 || strconv.Itoa(n) != rest {
		return 0, false
	}
	return n, true
}

// Evidence is what telemetry and the cluster showed about a namespace over
// the plan's window. Rates are per second, averaged over the window.
type Evidence struct {
	// HasTelemetry is false when Prometheus had no Istio series for the
	// namespace's workloads: "no data" is never read as "no plaintext".
	HasTelemetry            bool    `yaml:"hasTelemetry" json:"hasTelemetry"`
	MTLSRequestRate         float64 `yaml:"mtlsRequestRate" json:"mtlsRequestRate"`
	PlaintextRequestRate    float64 `yaml:"plaintextRequestRate" json:"plaintextRequestRate"`
	MTLSConnectionRate      float64 `yaml:"mtlsConnectionRate" json:"mtlsConnectionRate"`
	PlaintextConnectionRate float64 `yaml:"plaintextConnectionRate" json:"plaintextConnectionRate"`
	// Byte rates are bytes received over TCP connections.
	MTLSByteRate      float64  `yaml:"mtlsByteRate,omitempty" json:"mtlsByteRate,omitempty"`
	PlaintextByteRate float64  `yaml:"plaintextByteRate,omitempty" json:"plaintextByteRate,omitempty"`
	PlaintextSources  []Source `yaml:"plaintextSources,omitempty" json:"plaintextSources,omitempty"`
	Sidecars          Coverage `yaml:"sidecars" json:"sidecars"`
}

// Source is one client sending plaintext into the namespace. Workload
// "unknown" means a client outside the mesh or without a sidecar.
type Source struct {
	Workload            string    `yaml:"workload" json:"workload"`
	Namespace           string    `yaml:"namespace" json:"namespace"`
	Principal           string    `yaml:"principal,omitempty" json:"principal,omitempty"`
	DestinationWorkload string    `yaml:"destinationWorkload,omitempty" json:"destinationWorkload,omitempty"`
	RequestRate         float64   `yaml:"requestRate" json:"requestRate"`
	ConnectionRate      float64   `yaml:"connectionRate,omitempty" json:"connectionRate,omitempty"`
	LastSeen            time.Time `yaml:"lastSeen" json:"lastSeen"`
}

// Coverage counts running pods and those with a sidecar.
type Coverage struct {
	Pods   int `yaml:"pods" json:"pods"`
	Meshed int `yaml:"meshed" json:"meshed"`
}

// ModeChange is the effective mode of one workload (and optionally one port)
// before and after the stage, recorded where it differs from the namespace's.
type ModeChange struct {
	Workload string `yaml:"workload" json:"workload"`
	Port     int32  `yaml:"port,omitempty" json:"port,omitempty"`
	Before   Mode   `yaml:"before" json:"before"`
	After    Mode   `yaml:"after" json:"after"`
}

// Severity says what a risk does to a stage's status.
type Severity string

// Severities.
const (
	SeverityBlock  Severity = "block"
	SeverityReview Severity = "review"
	SeverityInfo   Severity = "info"
)

// Risk is one thing that STRICT could break, with the fix.
type Risk struct {
	Code     string    `yaml:"code" json:"code"`
	Severity Severity  `yaml:"severity" json:"severity"`
	Message  string    `yaml:"message" json:"message"`
	Object   ObjectRef `yaml:"object,omitempty" json:"object,omitempty"`
	// Fix is written once for a run of risks of one code with the same
	// fix (the risks are sorted by code): empty on the others.
	Fix string `yaml:"fix,omitempty" json:"fix,omitempty"`
}

// ObjectRef names the Kubernetes object a risk is about.
type ObjectRef struct {
	APIVersion string `yaml:"apiVersion,omitempty" json:"apiVersion,omitempty"`
	Kind       string `yaml:"kind,omitempty" json:"kind,omitempty"`
	Namespace  string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	Name       string `yaml:"name,omitempty" json:"name,omitempty"`
}

// IsZero lets yaml omit an empty reference.
func (o ObjectRef) IsZero() bool { return o == ObjectRef{} }

// Policy is the PeerAuthentication the stage applies, in the shape of the
// Kubernetes object so a reviewer reads exactly what will be written.
type Policy struct {
	APIVersion string         `yaml:"apiVersion" json:"apiVersion"`
	Kind       string         `yaml:"kind" json:"kind"`
	Metadata   PolicyMetadata `yaml:"metadata" json:"metadata"`
	Spec       PolicySpec     `yaml:"spec" json:"spec"`
	// UpdatesExisting is true when the stage patches a namespace-wide policy
	// that already exists (Istio keeps the oldest of two namespace-wide
	// policies, so adding a second one would be ignored).
	UpdatesExisting bool `yaml:"updatesExisting,omitempty" json:"updatesExisting,omitempty"`
	// AlsoUpdates names the namespace's other namespace-wide policies,
	// oldest first: Istio ignores them today (it uses the oldest, the one
	// in metadata), and the stage sets them to the same mode in place, so
	// deleting the oldest later cannot bring the old mode back. Rollback
	// restores each of them.
	AlsoUpdates []string `yaml:"alsoUpdates,omitempty" json:"alsoUpdates,omitempty"`
}

// PolicyMetadata is the subset of ObjectMeta the plan controls.
type PolicyMetadata struct {
	Name      string            `yaml:"name" json:"name"`
	Namespace string            `yaml:"namespace" json:"namespace"`
	Labels    map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// PolicySpec is the namespace-wide PeerAuthentication spec.
type PolicySpec struct {
	MTLS PolicyMTLS `yaml:"mtls" json:"mtls"`
}

// PolicyMTLS holds the mode.
type PolicyMTLS struct {
	Mode Mode `yaml:"mode" json:"mode"`
}

// ProbeKind is how a probe is made.
type ProbeKind string

// Probe kinds.
const (
	// ProbeHTTP is an HTTP request made by the tool's own process: from a
	// sidecar-less vantage point, i.e. a plaintext client.
	ProbeHTTP ProbeKind = "http"
	// ProbeExec runs a command (curl by default) in an existing pod.
	ProbeExec ProbeKind = "exec"
	// ProbeTCP opens a plaintext TCP connection from the tool's own process
	// to URL "tcp://host:port" and writes one line: for ports that do not
	// speak HTTP (databases, caches, queues).
	ProbeTCP ProbeKind = "tcp"
)

// Probe is one check made after the policy reached the proxies.
type Probe struct {
	Name string    `yaml:"name" json:"name"`
	Kind ProbeKind `yaml:"kind" json:"kind"`
	URL  string    `yaml:"url" json:"url"`
	// Resolve overrides name resolution as curl's --resolve does:
	// "host:port:address".
	Resolve string `yaml:"resolve,omitempty" json:"resolve,omitempty"`
	// Pod and Container select where an exec probe runs ("namespace/name" or
	// a name in the stage's namespace).
	Pod       string `yaml:"pod,omitempty" json:"pod,omitempty"`
	Container string `yaml:"container,omitempty" json:"container,omitempty"`
	// Command overrides the exec probe's command; the default is curl on URL.
	Command []string `yaml:"command,omitempty" json:"command,omitempty"`
	Expect  Expect   `yaml:"expect" json:"expect"`
}

// TCPAddress is the host:port of a tcp probe's URL "tcp://host:port"; it
// refuses anything else (a path, a query, userinfo, a missing port), so
// what the probe connects to is exactly what the reviewer read.
func TCPAddress(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL: %w", raw, err)
	}
	if u.Scheme != "tcp" || u.Opaque != "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q must be tcp://host:port and nothing more", raw)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" || port == "" {
		return "", fmt.Errorf("%q must name a host and a port: tcp://host:port", raw)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q: port %q is not 1-65535", raw, port)
	}
	return u.Host, nil
}

// Expect is a probe's expectation: an HTTP status, that the connection is
// refused or reset (what a plaintext client sees under STRICT), or, for a
// TCP probe, that the connection is accepted and answers or stays open
// (a port that still takes plaintext).
type Expect struct {
	Status  int  `yaml:"status,omitempty" json:"status,omitempty"`
	Refused bool `yaml:"refused,omitempty" json:"refused,omitempty"`
	Open    bool `yaml:"open,omitempty" json:"open,omitempty"`
}

// String says what the expectation wants, for messages.
func (e Expect) String() string {
	switch {
	case e.Refused:
		return "refused"
	case e.Open:
		return "an open connection"
	}
	return fmt.Sprintf("HTTP %d", e.Status)
}

// Comparison is how a gate's value is compared with its threshold.
type Comparison string

// Comparisons.
const (
	GreaterOrEqual Comparison = ">="
	Greater        Comparison = ">"
	LessOrEqual    Comparison = "<="
	Less           Comparison = "<"
)

// Relative says how a gate's threshold relates to the baseline the executor
// measures before the change.
type Relative string

// Relative thresholds.
const (
	// Absolute: the threshold is the number itself.
	Absolute Relative = ""
	// BaselineMinus: the threshold is baseline - threshold (e.g. success
	// rate may drop by at most 0.01).
	BaselineMinus Relative = "baseline-minus"
	// BaselineTimes: the threshold is baseline * threshold (e.g. request
	// rate must stay above 0.8 of what it was).
	BaselineTimes Relative = "baseline-times"
)

// Gate is a Prometheus health check evaluated through the soak.
type Gate struct {
	Name       string     `yaml:"name" json:"name"`
	Query      string     `yaml:"query" json:"query"`
	Comparison Comparison `yaml:"comparison" json:"comparison"`
	Threshold  float64    `yaml:"threshold" json:"threshold"`
	Relative   Relative   `yaml:"relative,omitempty" json:"relative,omitempty"`
	// SamplesQuery counts the requests behind Query over the same interval;
	// with fewer than MinSamples the gate reports "not enough data" rather
	// than passing silently.
	SamplesQuery string `yaml:"samplesQuery,omitempty" json:"samplesQuery,omitempty"`
	MinSamples   int    `yaml:"minSamples,omitempty" json:"minSamples,omitempty"`
}

// Stage returns the stage numbered n, or an error saying which exist.
func (p *Plan) Stage(n int) (*Stage, error) {
	if n < 1 || n > len(p.Stages) {
		return nil, fmt.Errorf("the plan has stages 1..%d; there is no stage %d", len(p.Stages), n)
	}
	return &p.Stages[n-1], nil
}
