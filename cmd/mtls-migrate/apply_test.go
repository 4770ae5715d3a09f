package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/mtls-migrate/mtls-migrate/executor"
	"github.com/mtls-migrate/mtls-migrate/internal/cli"
	"github.com/mtls-migrate/mtls-migrate/internal/kube"
	"github.com/mtls-migrate/mtls-migrate/internal/state"
	"github.com/mtls-migrate/mtls-migrate/rollback"
)

func TestApplyFlags(t *testing.T) {
	tests := []struct {
		args []string
		code int
	}{
		{[]string{"--plan", "p.yaml", "--stage", "1"}, 0},
		{[]string{"--plan", "p.yaml", "--stage", "1", "--force"}, cli.ExitUsage},
		{[]string{"--plan", "p.yaml", "--stage", "1", "--force", "--reason", "demo"}, 0},
		{[]string{"--plan", "p.yaml"}, cli.ExitUsage},
		{[]string{"--plan", "p.yaml", "--stage", "1", "--dry-run", "client"}, cli.ExitUsage},
		{[]string{"--plan", "p.yaml", "--stage", "1", "--max-consecutive-errors", "0"}, cli.ExitUsage},
		{[]string{"--plan", "p.yaml", "--stage", "1", "--state-namespace", ""}, cli.ExitUsage},
		{[]string{"--plan", "p.yaml", "--next", "--plan-digest", "sha256:" + strings.Repeat("a", 64)}, 0},
		{[]string{"--plan", "p.yaml", "--next", "--plan-digest", "abc"}, cli.ExitUsage},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, ran, err := parseCommand(t, newApplyCmd, tt.args)
			if cli.Code(err) != tt.code {
				t.Fatalf("exit %d (%v), want %d", cli.Code(err), err, tt.code)
			}
			if tt.code == 0 && (!ran || got.StateNamespace != state.DefaultNamespace || got.GateInterval.Seconds() != 10) {
				t.Fatalf("defaults not set: %+v", got)
			}
		})
	}
}

func TestApplyExitCodes(t *testing.T) {
	tests := []struct {
		err  error
		code int
	}{
		{nil, cli.ExitOK},
		{&executor.RefusedError{Reason: "blocked"}, cli.ExitUsage},
		{&state.NamespaceMissingError{Namespace: "mtls-migrate"}, cli.ExitUsage},
		{&executor.RolledBackError{Reason: "gate"}, cli.ExitRolledBack},
		{&executor.RollbackFailedError{Reason: "gate", Err: &rollback.ConflictError{Object: "x", Reason: "y"}}, cli.ExitRollbackFailed},
		{errors.New("prometheus down before the change"), cli.ExitError},
	}
	for _, tt := range tests {
		if got := cli.Code(applyExitError(tt.err)); got != tt.code {
			t.Errorf("%v: exit %d, want %d", tt.err, got, tt.code)
		}
	}
}

func TestInvalidPlanIsExit2(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "plan.yaml")
	if err := os.WriteFile(path, []byte("apiVersion: mtls-migrate.io/v1alpha1\nkind: MigrationPlan\nmetadatta: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	noCluster := func() (*kube.Clients, error) { return nil, errors.New("no cluster in this test") }
	for _, src := range []string{path, filepath.Join(dir, "missing.yaml"), "configmap:ns/too/many/parts"} {
		f := &factory{newKubeClients: noCluster}
		if _, _, err := f.loadPlan(context.Background(), src); cli.Code(err) != cli.ExitUsage {
			t.Errorf("%s: exit %d: %v", src, cli.Code(err), err)
		}
	}
	// Every command that takes --plan loads it the same way: an invalid
	// plan is exit 2 before anything is contacted.
	for _, args := range [][]string{
		{"apply", "--plan", path, "--stage", "1"},
		{"apply", "--plan", path, "--next"},
		{"rollback", "--plan", path, "--stage", "1"},
		{"status", "--plan", path},
	} {
		if _, err := runRoot(t, args...); cli.Code(err) != cli.ExitUsage {
			t.Errorf("%v: exit %d: %v", args, cli.Code(err), err)
		}
	}
}

func TestRollbackFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		code int
	}{
		{[]string{"--plan", "p.yaml", "--all"}, 0},
		{[]string{"--plan", "p.yaml", "--stage", "2"}, 0},
		{[]string{"--plan", "p.yaml", "--stage", "2", "--all"}, cli.ExitUsage},
		{[]string{"--plan", "p.yaml", "--all", "-o", "xml"}, cli.ExitUsage},
	} {
		f := &factory{streams: genericiooptions.IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}}
		cmd := newRollbackCmd(f, func(*rollbackOptions) error { return nil })
		cmd.SetArgs(tt.args)
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		if err := cmd.Execute(); cli.Code(err) != tt.code {
			t.Errorf("%v: exit %d (%v)", tt.args, cli.Code(err), err)
		}
	}
}

// TestPinnedDigestRefusesAnotherPlan: --plan-digest makes a changed plan
// (another ConfigMap content) exit 2 before any cluster is contacted.
func TestPinnedDigestRefusesAnotherPlan(t *testing.T) {
	path := filepath.Join("..", "..", "plans", "testdata", "valid.yaml")
	pinned := "sha256:" + strings.Repeat("0", 64)
	for _, mode := range [][]string{{"--stage", "1"}, {"--next"}} {
		args := append([]string{"apply", "--plan", path, "--plan-digest", pinned}, mode...)
		out, err := runRoot(t, args...)
		if cli.Code(err) != cli.ExitUsage || !strings.Contains(err.Error(), "not the reviewed plan") {
			t.Fatalf("%v: exit %d: %v\n%s", mode, cli.Code(err), err, out)
		}
	}
}
