package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// tlsFiles are the files Start hands istiod: a mesh CA plugged in the way
// Istio documents for user CAs, and a serving certificate from it.
type tlsFiles struct {
	rootPEM           []byte
	certFile, keyFile string // istiod's serving certificate (webhook and secure xDS)
	rootFile          string // --caCertFile: the root istiod announces
}

// writeCerts writes, under dir:
//
//   - etc/cacerts/{ca-cert,ca-key,cert-chain,root-cert}.pem, a self-signed
//     root istiod uses as its signing CA: istiod looks for a plugged-in CA
//     in ./etc/cacerts relative to its working directory (ROOT_CA_DIR, see
//     pilot/pkg/bootstrap/istio_ca.go, detectSigningCABundleAndCRL);
//   - var/run/secrets/istiod/tls/{tls.crt,tls.key}, a serving certificate
//     signed by that root for istiod's Service names and 127.0.0.1, passed
//     with --tlsCertFile/--tlsKeyFile/--caCertFile
//     (pilot/pkg/bootstrap/server.go, initIstiodCerts and
//     hasCustomTLSCerts: user-provided DNS certificates win over the ones
//     istiod would sign for itself, which name only istiod.istio-system.svc
//     and which the API server could not check against 127.0.0.1).
//
// One root for both keeps the sandbox's trust as in a mesh with a plugged
// CA: the root istiod publishes (istio-ca-root-cert, the caCertFile) is the
// one its serving certificate and the workload certificates chain to, and
// the API server's caBundle for the webhook is that root too.
func writeCerts(dir string) (*tlsFiles, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{Organization: []string{"cluster.local"}, CommonName: "mtls-migrate sandbox mesh root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create the mesh root: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "istiod.istio-system.svc"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		// The names istiod's own DNS certificate carries (getDNSNames in
		// pilot/pkg/bootstrap/server.go), and the loopback address the
		// webhook URL uses.
		DNSNames:    []string{"istiod.istio-system.svc", "istiod-remote.istio-system.svc", "istio-pilot.istio-system.svc", "istiod", "localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create istiod's serving certificate: %w", err)
	}
	caKeyPEM, err := keyPEM(caKey)
	if err != nil {
		return nil, err
	}
	srvKeyPEM, err := keyPEM(srvKey)
	if err != nil {
		return nil, err
	}
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	cacerts := filepath.Join(dir, "etc", "cacerts")
	tlsDir := filepath.Join(dir, "var", "run", "secrets", "istiod", "tls")
	f := &tlsFiles{rootPEM: rootPEM, certFile: filepath.Join(tlsDir, "tls.crt"), keyFile: filepath.Join(tlsDir, "tls.key"), rootFile: filepath.Join(cacerts, "root-cert.pem")}
	for _, w := range []struct {
		path string
		data []byte
	}{
		// The file names of Istio's "cacerts" Secret (security/pkg/pki/ca: CACertFile, ...).
		{filepath.Join(cacerts, "ca-cert.pem"), rootPEM},
		{filepath.Join(cacerts, "ca-key.pem"), caKeyPEM},
		{filepath.Join(cacerts, "cert-chain.pem"), rootPEM},
		{f.rootFile, rootPEM},
		{f.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER})},
		{f.keyFile, srvKeyPEM},
	} {
		if err := os.MkdirAll(filepath.Dir(w.path), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(w.path, w.data, 0o600); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}
