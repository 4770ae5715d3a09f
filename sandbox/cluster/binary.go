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

// Binary is a program a script of scripts/ builds from source and caches
// as <Name>-<Version>-<go.mod hash> in CacheDir.
type Binary struct {
	Name, Version string
	// Env overrides where the binary is; Script builds it.
	Env, Script string
}

// APIServer is the kube-apiserver binary.
var APIServer = Binary{Name: "kube-apiserver", Version: KubernetesVersion, Env: EnvAPIServerBinary, Script: "scripts/build-kube-apiserver.sh"}

// FindAPIServerBinary resolves the kube-apiserver binary (APIServer.Find).
func FindAPIServerBinary(explicit string) (string, error) { return APIServer.Find(explicit) }

// Find resolves the binary: explicit (if not empty), else $Env, else the
// newest <Name>-<Version>-<go.mod hash> in CacheDir. The script keys the
// name by a hash of its nested module's go.mod as well; this package cannot
// see that file at run time, so it takes the newest build of the version.
func (b Binary) Find(explicit string) (string, error) {
	if explicit != "" {
		return b.checkExecutable(explicit, "an explicit path")
	}
	if env := os.Getenv(b.Env); env != "" {
		return b.checkExecutable(env, "$"+b.Env)
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	pattern := filepath.Join(cache, b.Name+"-"+b.Version+"-*")
	matches, err := filepath.Glob(pattern)
	if err != nil {
		return "", fmt.Errorf("look for %s in %s: %w", b.Name, cache, err)
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
		return "", fmt.Errorf("%s %s binary not found at %s: run %s (or set $%s)", b.Name, b.Version, pattern, b.Script, b.Env)
	}
	return best, nil
}

func (b Binary) checkExecutable(path, from string) (string, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s binary not found at %s (from %s): run %s", b.Name, path, from, b.Script)
	}
	if err != nil {
		return "", fmt.Errorf("%s binary %s (from %s): %w", b.Name, path, from, err)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s binary %s (from %s) is not an executable file", b.Name, path, from)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", path, err)
	}
	return strings.TrimSpace(abs), nil
}
