// Package rollback owns the snapshots of a namespace's PeerAuthentications
// and their exact restore. It restores from the migration state alone (no
// Prometheus, no plan evidence): it deletes only the object a stage created
// (checked by UID and the managed-by label) and patches back in place the
// spec, labels and annotations of a pre-existing object the stage changed.
// A pre-existing policy is never deleted and recreated: its creation time
// decides Istio's precedence between namespace-wide policies (the oldest
// wins; see https://istio.io/latest/docs/reference/config/security/peer_authentication/).
package rollback

import (
	"encoding/json"
	"fmt"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
)

// Encode and Decode are the state's snapshot form of a namespace's
// PeerAuthentications; they stay here, not in internal/peerauth, because
// only a stage's snapshot (written by the executor, read by the restore)
// uses them, and the restore is what decides what the form must hold.
// Reading the live objects is internal/peerauth's.

// Encode turns objects into the state's snapshot form: whole objects as JSON,
// without managedFields (bookkeeping the restore never needs, and the bulk of
// an object).
func Encode(objs []*securityv1.PeerAuthentication) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(objs))
	for _, o := range objs {
		c := o.DeepCopy()
		c.ManagedFields = nil
		c.APIVersion, c.Kind = "security.istio.io/v1", "PeerAuthentication"
		b, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("snapshot PeerAuthentication %s/%s: %w", o.Namespace, o.Name, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// Decode reads a snapshot back.
func Decode(raw []json.RawMessage) ([]*securityv1.PeerAuthentication, error) {
	out := make([]*securityv1.PeerAuthentication, 0, len(raw))
	for i, r := range raw {
		pa := &securityv1.PeerAuthentication{}
		if err := json.Unmarshal(r, pa); err != nil {
			return nil, fmt.Errorf("decode snapshot object %d: %w", i, err)
		}
		out = append(out, pa)
	}
	return out, nil
}
