package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// KubernetesVersion is the kube-apiserver version the sandbox runs; it must
// match the k8s.io/kubernetes requirement in sandbox/apiserver/go.mod.
const KubernetesVersion = "v1.37.2"

// EnvAPIServerBinary names the environment variable that overrides where the
// kube-apiserver binary is.
const EnvAPIServerBinary = "MTLS_MIGRATE_KUBE_APISERVER"

// CacheDir returns the directory scripts/build-kube-apiserver.sh caches
// binaries in: $MTLS_MIGRATE_CACHE, else $XDG_CACHE_HOME/mtls-migrate, else
// ~/.cache/mtls-migrate.
func CacheDir() (string, error) {
	if d := os.Getenv("MTLS_MIGRATE_CACHE"); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "mtls-migrate"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the cache dir: set MTLS_MIGRATE_CACHE or HOME: %w", err)
	}
	return filepath.Join(home, ".cache", "mtls-migrate"), nil
}

// FindAPIServerBinary resolves the kube-apiserver binary: explicit (if not
// empty), else $MTLS_MIGRATE_KUBE_APISERVER, else the newest
// kube-apiserver-<KubernetesVersion>-<go.mod hash> in CacheDir. The script
// keys the name by a hash of sandbox/apiserver/go.mod as well; this package
// cannot see that file at run time, so it takes the newest build of the
// version.
func FindAPIServerBinary(explicit string) (string, error) {
	if explicit != "" {
		return checkExecutable(explicit, "Options.APIServerBinary")
	}
	if env := os.Getenv(EnvAPIServerBinary); env != "" {
		return checkExecutable(env, "$"+EnvAPIServerBinary)
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	pattern := filepath.Join(cache, "kube-apiserver-"+KubernetesVersion+"-*")
	matches, err := filepath.Glob(pattern)
	if err != nil {
		return "", fmt.Errorf("look for kube-apiserver in %s: %w", cache, err)
	}
	var best string
	var bestInfo fs.FileInfo
	for _, m := range matches {
		fi, err := os.Stat(m)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			continue
		}
		if bestInfo == nil || fi.ModTime().After(bestInfo.ModTime()) {
			best, bestInfo = m, fi
		}
	}
	if best == "" {
		return "", fmt.Errorf("kube-apiserver %s binary not found at %s: run scripts/build-kube-apiserver.sh (or set $%s)", KubernetesVersion, pattern, EnvAPIServerBinary)
	}
	return best, nil
}

func checkExecutable(path, from string) (string, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("kube-apiserver binary not found at %s (from %s): run scripts/build-kube-apiserver.sh", path, from)
	}
	if err != nil {
		return "", fmt.Errorf("kube-apiserver binary %s (from %s): %w", path, from, err)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("kube-apiserver binary %s (from %s) is not an executable file", path, from)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", path, err)
	}
	return strings.TrimSpace(abs), nil
}
