package dataplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"time"
)

// ca is the sandbox's in-memory mesh CA, standing in for istiod's: it issues
// each workload an X.509 certificate whose only SAN is its SPIFFE ID
// spiffe://cluster.local/ns/<ns>/sa/<sa>
// (https://istio.io/latest/docs/concepts/security/#istio-identity).
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool

	mu     sync.Mutex
	leaves map[string]*tls.Certificate
}

func newCA() (*ca, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"cluster.local"}, CommonName: "sandbox mesh CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &ca{cert: cert, key: key, pool: pool, leaves: map[string]*tls.Certificate{}}, nil
}

// SPIFFEID is the identity Istio gives a workload's service account.
func SPIFFEID(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

func (c *ca) leaf(id string) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.leaves[id]; ok {
		return l, nil
	}
	u, err := url.Parse(id)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour), // Istio's default workload cert TTL
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", id, err)
	}
	leafCert, _ := x509.ParseCertificate(der)
	l := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leafCert}
	c.leaves[id] = l
	return l, nil
}

// istioALPN is what Istio's sidecars offer on mTLS connections
// (ALPNInMeshWithMxc in istio's pilot/pkg/networking/util; the outbound
// clusters istiod sends carry it too), and what the sandbox's clients offer
// when the data plane decides itself.
var istioALPN = []string{"istio-peer-exchange", "istio"}

func (c *ca) serverConfig(id string) (*tls.Config, error) {
	l, err := c.leaf(id)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{*l},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    c.pool,
		MinVersion:   tls.VersionTLS12,
		// No NextProtos: Envoy's chain selection has read the client's
		// ALPN already (tls_inspector), and crypto/tls would refuse a
		// client whose protocols do not overlap, where Envoy does not.
	}, nil
}

// clientConfig verifies the server's chain against the mesh CA but, like
// Envoy with Istio's default (no SAN pinning per endpoint), not a host name:
// the leaf has no DNS SAN.
func (c *ca) clientConfig(id string) (*tls.Config, error) {
	l, err := c.leaf(id)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates:       []tls.Certificate{*l},
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate below
		MinVersion:         tls.VersionTLS12,
		NextProtos:         istioALPN,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("server sent no certificate")
			}
			cert, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = cert.Verify(x509.VerifyOptions{Roots: c.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		},
	}, nil
}

// peerSPIFFE returns the URI SAN of the verified peer certificate.
func peerSPIFFE(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	for _, u := range cs.PeerCertificates[0].URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}
