package inventory

import (
	"sort"

	"github.com/mtls-migrate/mtls-migrate/internal/peerauth"
)

// ConfigDigest digests every PeerAuthentication and DestinationRule of the
// inventory (the plan's metadata.configDigest).
func ConfigDigest(inv *Inventory) string {
	type dr struct {
		Namespace  string   `json:"namespace"`
		Name       string   `json:"name"`
		UID        string   `json:"uid"`
		Generation int64    `json:"generation"`
		Host       string   `json:"host"`
		ExportTo   []string `json:"exportTo,omitempty"`
		DisableTLS []string `json:"disableTLS,omitempty"`
	}
	drs := make([]dr, 0, len(inv.DestinationRules))
	for _, d := range inv.DestinationRules {
		drs = append(drs, dr(d))
	}
	sort.Slice(drs, func(i, j int) bool {
		if drs[i].Namespace != drs[j].Namespace {
			return drs[i].Namespace < drs[j].Namespace
		}
		return drs[i].Name < drs[j].Name
	})
	return peerauth.CanonicalDigest(struct {
		PeerAuthentications string `json:"peerAuthentications"`
		DestinationRules    []dr   `json:"destinationRules"`
	}{peerauth.DigestPolicies(inv.PeerAuthentications), drs})
}
