package peerauth

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sort"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/mtls-migrate/mtls-migrate/internal/mtlsmode"
)

// canonicalPolicy is what the digest covers: identity (name, uid), creation
// time (it decides which policy Istio uses), labels, annotations and the
// whole spec (selector, mode, port modes). resourceVersion and
// managedFields are left out: they change without the policy changing.
type canonicalPolicy struct {
	Namespace   string            `json:"namespace"`
	Name        string            `json:"name"`
	UID         string            `json:"uid"`
	Created     string            `json:"created"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Selector    map[string]string `json:"selector,omitempty"`
	Mode        string            `json:"mode"`
	Ports       []canonicalPort   `json:"ports,omitempty"`
}

type canonicalPort struct {
	Port uint32 `json:"port"`
	Mode string `json:"mode"`
}

// PolicyDigest digests a namespace's PeerAuthentications for a plan stage's
// policyDigest; apply recomputes it on the live objects and refuses the
// stage when it differs.
func PolicyDigest(pas []*securityv1.PeerAuthentication) string {
	ps := make([]mtlsmode.Policy, 0, len(pas))
	for _, pa := range pas {
		ps = append(ps, mtlsmode.FromV1(pa))
	}
	return DigestPolicies(ps)
}

// DigestPolicies is PolicyDigest over already converted policies: the same
// policies give the same digest in any order.
func DigestPolicies(ps []mtlsmode.Policy) string {
	c := make([]canonicalPolicy, 0, len(ps))
	for i := range ps {
		p := &ps[i]
		cp := canonicalPolicy{
			Namespace: p.Namespace, Name: p.Name, UID: p.UID,
			Created: p.CreationTimestamp.UTC().Format(time.RFC3339),
			Labels:  nonEmpty(p.Labels), Annotations: nonEmpty(p.Annotations),
			Selector: nonEmpty(p.Selector), Mode: string(p.Mode),
		}
		for port, m := range p.PortModes {
			cp.Ports = append(cp.Ports, canonicalPort{Port: port, Mode: string(m)})
		}
		sort.Slice(cp.Ports, func(i, j int) bool { return cp.Ports[i].Port < cp.Ports[j].Port })
		c = append(c, cp)
	}
	sort.Slice(c, func(i, j int) bool {
		if c[i].Namespace != c[j].Namespace {
			return c[i].Namespace < c[j].Namespace
		}
		return c[i].Name < c[j].Name
	})
	return CanonicalDigest(c)
}

func nonEmpty(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}

// CanonicalDigest is "sha256:" and the hex digest of v's JSON: the form of
// the policy digest, and of any digest that combines it with other objects
// (the inventory's configDigest). encoding/json writes struct fields in
// order and map keys sorted: a canonical form.
func CanonicalDigest(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Only strings, numbers and maps of strings: cannot fail.
		panic(err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
