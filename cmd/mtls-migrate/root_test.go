package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/mtls-migrate/mtls-migrate/internal/cli"
)

func runRoot(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCmd(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err := cmd.Execute()
	return out.String() + errOut.String(), err
}

// parseCommand builds a command with a runF that captures its options and
// runs it on args: flag parsing and validation, apart from behaviour. Flag
// errors map to the usage code as they do under the root command. ran says
// whether validation passed and runF was reached.
func parseCommand[O any](t *testing.T, newCmd func(*factory, func(O) error) *cobra.Command, args []string) (got O, ran bool, err error) {
	t.Helper()
	f := &factory{streams: genericiooptions.IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}}
	cmd := newCmd(f, func(o O) error { got, ran = o, true; return nil })
	cmd.SetArgs(args)
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.WithCode(cli.ExitUsage, err) })
	return got, ran, cmd.Execute()
}

func TestHelpListsTheFourCommands(t *testing.T) {
	out, err := runRoot(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"plan", "apply", "rollback", "status", "version", "completion"} {
		if !strings.Contains(out, "\n  "+c+" ") {
			t.Errorf("--help does not list %q:\n%s", c, out)
		}
	}
}

func TestGlobalFlagErrorsAreUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"plan", "--windw", "7d"}, "unknown flag"},
		{"bad log format", []string{"--log-format", "xml", "version"}, "--log-format"},
		{"bad prometheus header", []string{"plan", "--prometheus-url", "http://p:9090", "--prometheus-header", "nokey"}, "KEY=VALUE"},
		{"unexpected argument", []string{"status", "extra"}, "unknown command"},
		{"bad prometheus url", []string{"plan", "--prometheus-url", "p:9090"}, "--prometheus-url"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PROMETHEUS_URL", "")
			_, err := runRoot(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			if cli.Code(err) != cli.ExitUsage {
				t.Fatalf("exit code %d, want %d", cli.Code(err), cli.ExitUsage)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, err := runRoot(t, "version")
	if err != nil || !strings.HasPrefix(out, "mtls-migrate ") {
		t.Fatalf("version: %q %v", out, err)
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, err := runRoot(t, "completion", sh)
		if err != nil || !strings.Contains(out, "mtls-migrate") {
			t.Fatalf("completion %s: %v", sh, err)
		}
	}
}
