package scale

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"time"
)

// Defaults of WorldOptions: the mesh the issue measured (10 workloads and
// 100 inbound flows per namespace).
const (
	DefaultWorkloads = 10
	DefaultFlows     = 100
	// ProxyVersion is the istio_build tag of every proxy and of istiod.
	ProxyVersion = "1.28.0"
	// HTTPPort and TCPPort are the workloads' container and Service ports.
	HTTPPort = 8080
	TCPPort  = 9000
	// counterAge is how long before End every counter started at 0: older
	// than any window the planner reads, so no series begins inside it.
	counterAge = 30 * 24 * time.Hour
	// unknown is Istio's value for a peer it could not identify.
	unknown = "unknown"
)

// WorldOptions size a World.
type WorldOptions struct {
	Namespaces int
	// Workloads per namespace (default 10); every fifth is TCP.
	Workloads int
	// Flows into each namespace (default 100).
	Flows int
	// End is the world's "now": the times of the classes' stopped flows
	// are relative to it. Counters keep rising after End.
	End time.Time
}

// Class is what a namespace's inbound plaintext looks like, by its index
// modulo 10.
type Class int

// Classes of namespaces. The share of plaintext flows is about 1%.
const (
	// ClassClean: mTLS only; the planner must call it ready.
	ClassClean Class = iota
	// ClassExternal (index%10 == 3): three flows from clients Istio cannot
	// identify (one of them TCP), still sending, each into another workload
	// (two such clients of one pod would be one series): PLAINTEXT_OBSERVED.
	ClassExternal
	// ClassStopped (index%10 == 5): one unidentified plaintext flow that
	// stopped 3 days before End: still PLAINTEXT_OBSERVED, last seen then.
	ClassStopped
	// ClassMeshedPlaintext (index%10 == 7): two flows from meshed clients
	// sending plaintext: MESHED_CLIENT_PLAINTEXT.
	ClassMeshedPlaintext
	// ClassOldPlaintext (index%10 == 9): one unidentified plaintext flow
	// that stopped 8 days before End, outside a 7-day window: ready.
	ClassOldPlaintext
)

func (c Class) String() string {
	return [...]string{"clean", "external", "stopped", "meshed-plaintext", "old-plaintext"}[c]
}

// ClassOf is the class of the namespace with index i.
func ClassOf(i int) Class {
	switch i % 10 {
	case 3:
		return ClassExternal
	case 5:
		return ClassStopped
	case 7:
		return ClassMeshedPlaintext
	case 9:
		return ClassOldPlaintext
	}
	return ClassClean
}

// Stop times of the stopped classes, before End. Off the hour, so a
// last-seen time computed at hourly steps is visibly rounded up.
const (
	StoppedAgo = 3*24*time.Hour - 17*time.Minute - 13*time.Second
	OldAgo     = 8 * 24 * time.Hour
)

// Flow is traffic from one client into one workload.
type Flow struct {
	DstNS    int // namespace index
	DstWL    int // workload index
	SrcNS    int // -1 for a client Istio cannot identify
	SrcWL    int
	TCP      bool
	Plain    bool // connection_security_policy="none" at the destination
	Rate     float64
	ByteRate float64   // TCP only
	Stop     time.Time // zero: never stops
}

// External reports whether Istio cannot identify the client.
func (f *Flow) External() bool { return f.SrcNS < 0 }

// World is a synthetic mesh and its telemetry.
type World struct {
	Opts   WorldOptions
	Names  []string // namespace names
	Flows  []Flow
	Origin time.Time // every counter is 0 here

	series   []series
	byMetric map[string][]int32
	wlNames  []string
}

// NewWorld builds the world for o (deterministic for the same options).
func NewWorld(o WorldOptions) *World {
	if o.Workloads <= 0 {
		o.Workloads = DefaultWorkloads
	}
	if o.Flows <= 0 {
		o.Flows = DefaultFlows
	}
	if o.End.IsZero() {
		o.End = time.Now().Truncate(time.Second)
	}
	w := &World{Opts: o, Origin: o.End.Add(-counterAge), byMetric: map[string][]int32{}}
	width := max(4, len(strconv.Itoa(o.Namespaces-1)))
	for i := 0; i < o.Namespaces; i++ {
		w.Names = append(w.Names, fmt.Sprintf("mesh-%0*d", width, i))
	}
	for j := 0; j < o.Workloads; j++ {
		w.wlNames = append(w.wlNames, fmt.Sprintf("wl-%02d", j))
	}
	for i := 0; i < o.Namespaces; i++ {
		w.addFlows(i)
	}
	w.buildSeries()
	return w
}

// isTCP: every fifth workload serves TCP.
func (w *World) isTCP(wl int) bool { return wl%5 == 4 }

func (w *World) addFlows(i int) {
	o := w.Opts
	n := o.Namespaces
	first := len(w.Flows)
	for f := 0; f < o.Flows; f++ {
		j, k := f%o.Workloads, f/o.Workloads
		src := (i + k + 1) % n
		fl := Flow{DstNS: i, DstWL: j, SrcNS: src, SrcWL: (j + k) % o.Workloads, TCP: w.isTCP(j)}
		h := hash(i, f)
		if fl.TCP {
			fl.Rate = 0.02 * float64(1+h%5)
			fl.ByteRate = 1500 * float64(1+h%7)
		} else {
			fl.Rate = 0.2 + 0.1*float64(h%19)
		}
		w.Flows = append(w.Flows, fl)
	}
	flows := w.Flows[first:]
	at := func(f int) *Flow { return &flows[f%len(flows)] }
	external := func(fl *Flow) { fl.SrcNS, fl.SrcWL, fl.Plain = -1, -1, true }
	switch ClassOf(i) {
	case ClassExternal:
		external(at(0))
		external(at(4)) // a TCP workload when there are 5 or more
		external(at(o.Workloads + 1))
	case ClassStopped:
		external(at(1))
		at(1).Stop = o.End.Add(-StoppedAgo)
	case ClassMeshedPlaintext:
		at(2).Plain = true
		at(2 + o.Workloads).Plain = true
	case ClassOldPlaintext:
		external(at(3))
		at(3).Stop = o.End.Add(-OldAgo)
	}
}

func hash(i, f int) uint32 {
	h := fnv.New32a()
	fmt.Fprintf(h, "%d/%d", i, f)
	return h.Sum32()
}

// Workload names wl-00, wl-01, ...
func (w *World) Workload(j int) string { return w.wlNames[j] }

// PodName is the one pod of workload j in namespace i, named as a
// Deployment's ReplicaSet names its pods.
func (w *World) PodName(i, j int) string {
	return w.wlNames[j] + "-" + w.TemplateHash(i, j) + "-" + podSuffix(i, j)
}

// TemplateHash is the pod-template-hash of workload j in namespace i.
func (w *World) TemplateHash(i, j int) string {
	return alnum(hash(i, -1-j), 10)
}

func podSuffix(i, j int) string { return alnum(hash(-1-i, j), 5) }

// alnum renders h as n characters from the alphabet Kubernetes uses for
// generated names.
func alnum(h uint32, n int) string {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	x := uint64(h)*2654435761 + 12345
	b := make([]byte, n)
	for k := range b {
		b[k] = alphabet[x%uint64(len(alphabet))]
		x = x/uint64(len(alphabet)) + uint64(h)*uint64(k+7)
	}
	return string(b)
}

// PodIP is the pod's address: 10.64.0.0/10, one per pod.
func (w *World) PodIP(i, j int) string {
	p := i*w.Opts.Workloads + j + 1
	return fmt.Sprintf("10.%d.%d.%d", 64+p>>16, (p>>8)&255, p&255)
}

// Principal is the SPIFFE identity of workload j in namespace i (its
// service account is named after it).
func (w *World) Principal(i, j int) string {
	return "spiffe://cluster.local/ns/" + w.Names[i] + "/sa/" + w.wlNames[j]
}

// Pods is the number of pods (and of Services).
func (w *World) Pods() int { return w.Opts.Namespaces * w.Opts.Workloads }

// Expect is the planner's verdict a namespace must get from the world.
type Expect struct {
	Class Class
	// Blocked namespaces have plaintext in the window.
	Blocked bool
	// Codes are the blocking risk codes the stage must carry.
	Codes []string
	// PlaintextInto are the destination workloads with plaintext in the window.
	PlaintextInto []string
	// LastSeen, when set, is when the namespace's only plaintext flow
	// stopped (the plan's last-seen time may be later by less than the
	// planner's step plus 5m, never earlier).
	LastSeen time.Time
}

// Risk codes the world produces (planner/doc.go).
const (
	CodePlaintextObserved     = "PLAINTEXT_OBSERVED"
	CodeMeshedClientPlaintext = "MESHED_CLIENT_PLAINTEXT"
)

// Expected is the verdict per namespace name for a plan over window ending
// at End.
func (w *World) Expected(window time.Duration) map[string]Expect {
	out := make(map[string]Expect, len(w.Names))
	from := w.Opts.End.Add(-window)
	for i, name := range w.Names {
		out[name] = Expect{Class: ClassOf(i)}
	}
	for k := range w.Flows {
		f := &w.Flows[k]
		if !f.Plain || (!f.Stop.IsZero() && !f.Stop.After(from)) {
			continue
		}
		e := out[w.Names[f.DstNS]]
		e.Blocked = true
		code := CodeMeshedClientPlaintext
		if f.External() {
			code = CodePlaintextObserved
		}
		e.Codes = appendNew(e.Codes, code)
		e.PlaintextInto = appendNew(e.PlaintextInto, w.wlNames[f.DstWL])
		if !f.Stop.IsZero() {
			e.LastSeen = f.Stop
		}
		out[w.Names[f.DstNS]] = e
	}
	return out
}

func appendNew(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// PlaintextFlows counts the flows marked plaintext (any time).
func (w *World) PlaintextFlows() int {
	n := 0
	for k := range w.Flows {
		if w.Flows[k].Plain {
			n++
		}
	}
	return n
}
