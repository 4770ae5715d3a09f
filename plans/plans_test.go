package plans

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
)

func loadValid(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadRoundTripIsByteIdentical(t *testing.T) {
	data := loadValid(t)
	p, err := Load("valid.yaml", data)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	out, err := Marshal(p)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	if !bytes.Equal(out, data) {
		t.Fatalf("round trip changed the document:\n--- got\n%s\n--- want\n%s", out, data)
	}
	p2, err := Load("again", out)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	d1, _ := Digest(p)
	d2, _ := Digest(p2)
	if d1 != d2 {
		t.Fatalf("digest changed across a round trip: %s != %s", d1, d2)
	}
}

func TestSaveFileThenLoadFile(t *testing.T) {
	p, err := Load("valid.yaml", loadValid(t))
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/plan.yaml"
	if err := SaveFile(path, p); err != nil {
		t.Fatal(err)
	}
	q, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := Marshal(p)
	b, _ := Marshal(q)
	if !bytes.Equal(a, b) {
		t.Fatal("saved plan loads back different")
	}
}

// TestLoadAcceptsTCPProbes: the probes the planner writes for ports that do
// not speak HTTP load back as written.
func TestLoadAcceptsTCPProbes(t *testing.T) {
	for _, expect := range []string{"refused: true", "open: true"} {
		doc := strings.Replace(string(loadValid(t)), "        kind: http\n        url: http://127.1.0.5:7070/\n        expect:\n          refused: true",
			"        kind: tcp\n        url: tcp://127.1.0.5:7070\n        expect:\n          "+expect, 1)
		p, err := Load("p.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", expect, err)
		}
		pr := p.Stages[0].Probes[0]
		if pr.Kind != ProbeTCP || pr.Expect.Refused != (expect == "refused: true") || pr.Expect.Open != (expect == "open: true") {
			t.Fatalf("%s: loaded %+v", expect, pr)
		}
	}
}

// TestLoadRejects covers each validation rule: the message must name the
// field and the line, so a reviewer can find the typo.
func TestLoadRejects(t *testing.T) {
	tests := []struct {
		name     string
		old, new string // textual edit of testdata/valid.yaml
		wantLine int
		want     string
	}{
		{"misspelled field", "    targetMode: STRICT\n    policyDigest", "    targetMod: STRICT\n    policyDigest", 21, `unknown field "targetMod"`},
		{"misspelled nested field", "        expect:\n          refused: true\n      - name: gateway", "        expect:\n          refsed: true\n      - name: gateway", 63, `unknown field "refsed"`},
		{"invalid namespace", "    namespace: cart\n    status: ready", "    namespace: Cart_NS\n    status: ready", 17, "stages[0].namespace"},
		{"stage numbers out of order", "  - number: 2", "  - number: 3", 86, "expected 2, got 3"},
		{"bad url", "url: http://127.1.0.5:7070/", "url: ftp//nope", 61, "stages[0].probes[0].url"},
		{"bad resolve", "resolve: boutique.example.com:8080:127.1.0.2", "resolve: boutique.example.com:http:127.1.0.2", 67, "stages[0].probes[1].resolve"},
		{"negative soak", "    soak: 5m", "    soak: -5m", 0, "invalid duration"},
		{"zero soak", "    soak: 5m", "    soak: 0s", 85, "stages[0].soak"},
		{"threshold not a number", "threshold: 0.01", "threshold: one-percent", 81, "stages[0].gates[0].threshold: cannot unmarshal"},
		{"threshold NaN", "threshold: 0.01", "threshold: .nan", 81, "stages[0].gates[0].threshold: must be a finite number"},
		{"bad comparison", "comparison: '>='", "comparison: '=>'", 80, "stages[0].gates[0].comparison"},
		{"bad status", "    status: ready", "    status: go", 18, "stages[0].status"},
		{"mode mismatch", "          mode: STRICT\n    probes", "          mode: PERMISSIVE\n    probes", 57, "stages[0].policy.spec.mtls.mode"},
		{"wrong api version", "apiVersion: mtls-migrate.io/v1alpha1", "apiVersion: mtls-migrate.io/v9", 1, "apiVersion"},
		{"expect both", "          refused: true\n      - name: gateway", "          refused: true\n          status: 200\n      - name: gateway", 63, "expect either status or refused"},
		{"tcp probe with a path", "        kind: http\n        url: http://127.1.0.5:7070/", "        kind: tcp\n        url: tcp://127.1.0.5:7070/admin", 61, "stages[0].probes[0].url: \"tcp://127.1.0.5:7070/admin\" must be tcp://host:port and nothing more"},
		{"tcp probe without a port", "        kind: http\n        url: http://127.1.0.5:7070/", "        kind: tcp\n        url: tcp://127.1.0.5", 61, "must name a host and a port"},
		{"tcp probe expecting a status", "        kind: http\n        url: http://127.1.0.5:7070/\n        expect:\n          refused: true", "        kind: tcp\n        url: tcp://127.1.0.5:7070\n        expect:\n          status: 200", 63, "a tcp probe has no HTTP status"},
		{"tcp probe expecting both", "        kind: http\n        url: http://127.1.0.5:7070/\n        expect:\n          refused: true", "        kind: tcp\n        url: tcp://127.1.0.5:7070\n        expect:\n          refused: true\n          open: true", 63, "either refused: true or open: true"},
		{"http probe expecting open", "        expect:\n          refused: true\n      - name: gateway", "        expect:\n          open: true\n      - name: gateway", 63, "open belongs to tcp probes"},
		{"exec without pod", "        pod: cart/testcurl\n", "", 70, "stages[0].probes[2].pod"},
		{"exec with its own command", "        container: curl\n", "        container: curl\n        command: [sh, -c, 'cat /var/run/secrets/kubernetes.io/serviceaccount/token']\n", 75, "stages[0].probes[2].command: a custom command is not allowed"},
		{"mesh stage not last", "    scope: mesh", "    scope: cluster", 88, "must be namespace or mesh"},
		{"DISABLE straight to STRICT", "    currentMode: PERMISSIVE", "    currentMode: DISABLE", 21, "PERMISSIVE in its own stage first"},
		{"not yaml", "kind: MigrationPlan", "kind: [MigrationPlan", 0, "did not find expected"},
		{"alsoUpdates on a created policy", "      spec:\n        mtls:\n          mode: STRICT\n    probes", "      alsoUpdates: [legacy]\n      spec:\n        mtls:\n          mode: STRICT\n    probes", 55, "stages[0].policy.alsoUpdates: other namespace-wide policies exist only where"},
		{"alsoUpdates names the policy itself", "      spec:\n        mtls:\n          mode: STRICT\n    probes", "      updatesExisting: true\n      alsoUpdates: [default]\n      spec:\n        mtls:\n          mode: STRICT\n    probes", 56, "stages[0].policy.alsoUpdates[0]: \"default\" is named twice"},
		{"policyDigest missing", "    policyDigest: sha256:1c42ddc0285b9c25135be3bf345e6a041271b784b22a6f6cab6588dab93c5980\n", "", 16, "stages[0].policyDigest: is required"},
		{"policyDigest not a sha256 digest", "policyDigest: sha256:1c42ddc0285b9c25135be3bf345e6a041271b784b22a6f6cab6588dab93c5980", "policyDigest: sha256:abcd", 22, `stages[0].policyDigest: "sha256:abcd" must be sha256: and 64 lower-case hex digits`},
		{"policyDigest after a stage that is not a number", "policyDigest: sha256:1c42ddc0285b9c25135be3bf345e6a041271b784b22a6f6cab6588dab93c5980", "policyDigest: after-stage:01", 22, "after-stage takes a stage number"},
		{"policyDigest after itself", "policyDigest: sha256:1c42ddc0285b9c25135be3bf345e6a041271b784b22a6f6cab6588dab93c5980", "policyDigest: after-stage:1", 22, "stage 1 does not come before this stage (1)"},
		{"policyDigest after a stage on another namespace", "policyDigest: sha256:5a7ceb99a12cca91c410419b5f5a796e583b376438a5e1415fbed902fff95a65", "policyDigest: after-stage:1", 91, `stages[1].policyDigest: "after-stage:1": stage 1 is on namespace "cart", not "istio-system"`},
		{"namespace-scope stage in the root namespace", "    scope: mesh\n", "    scope: namespace\n", 87, `stages[1].namespace: "istio-system" is the mesh's root namespace`},
		{"alsoUpdates invalid name", "      spec:\n        mtls:\n          mode: STRICT\n    probes", "      updatesExisting: true\n      alsoUpdates: [Not_A_Name]\n      spec:\n        mtls:\n          mode: STRICT\n    probes", 56, "stages[0].policy.alsoUpdates[0]: \"Not_A_Name\" is not a valid object name"},
	}
	base := string(loadValid(t))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(base, tc.old) {
				t.Fatalf("test edit %q not found in testdata/valid.yaml", tc.old)
			}
			doc := strings.Replace(base, tc.old, tc.new, 1)
			_, err := Load("p.yaml", []byte(doc))
			if err == nil {
				t.Fatal("Load accepted an invalid plan")
			}
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("error is %T, want *InvalidError: %v", err, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			if tc.wantLine > 0 {
				found := false
				for _, p := range inv.Problems {
					if p.Line == tc.wantLine {
						found = true
					}
				}
				if !found {
					t.Fatalf("no problem on line %d: %v", tc.wantLine, err)
				}
			}
		})
	}
}

func TestLoadRejectsEmptyAndMultiDocument(t *testing.T) {
	for name, doc := range map[string]string{
		"empty":          "",
		"scalar":         "just text",
		"two documents":  string(loadValid(t)) + "---\nkind: Other\n",
		"no stages":      "apiVersion: mtls-migrate.io/v1alpha1\nkind: MigrationPlan\nmetadata: {name: x, generatedAt: 2026-01-01T00:00:00Z, window: 1d, rootNamespace: istio-system}\nstages: []\n",
		"list of stages": "- number: 1\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Load("p.yaml", []byte(doc)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestDurationFormats(t *testing.T) {
	for in, want := range map[string]string{"7d": "7d", "168h": "7d", "36h": "1d12h", "90s": "1m30s", "10m": "10m"} {
		d, err := ParseDuration(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if d.String() != want {
			t.Errorf("ParseDuration(%q).String() = %q, want %q", in, d.String(), want)
		}
	}
	if _, err := ParseDuration("soon"); err == nil {
		t.Fatal("accepted a non-duration")
	}
}

func TestStageLookup(t *testing.T) {
	p, err := Load("valid.yaml", loadValid(t))
	if err != nil {
		t.Fatal(err)
	}
	if s, err := p.Stage(2); err != nil || s.Namespace != "istio-system" {
		t.Fatalf("Stage(2) = %v, %v", s, err)
	}
	if _, err := p.Stage(3); err == nil || !strings.Contains(err.Error(), "1..2") {
		t.Fatalf("Stage(3) error = %v", err)
	}
}

func TestParseResolve(t *testing.T) {
	h, port, addr, err := ParseResolve("example.com:443:[::1]")
	if err != nil || h != "example.com" || port != "443" || addr != "::1" {
		t.Fatalf("got %q %q %q %v", h, port, addr, err)
	}
}

// TestValidateAcceptsAfterStageOnTheSameNamespace: the STRICT stage of a
// namespace that is DISABLE today names its PERMISSIVE stage, whose
// objects' UIDs and times no plan can know in advance.
func TestValidateAcceptsAfterStageOnTheSameNamespace(t *testing.T) {
	p, err := Load("valid.yaml", loadValid(t))
	if err != nil {
		t.Fatal(err)
	}
	permissive := p.Stages[0]
	permissive.CurrentMode, permissive.TargetMode = ModeDisable, ModePermissive
	permissive.Policy.Spec.MTLS.Mode = ModePermissive
	strict := p.Stages[0]
	strict.Number, strict.PolicyDigest = 2, AfterStage(1)
	mesh := p.Stages[1]
	mesh.Number = 3
	p.Stages = []Stage{permissive, strict, mesh}
	if probs := Validate(p); len(probs) > 0 {
		t.Fatalf("Validate: %v", probs)
	}
	if n, ok := p.Stages[1].PolicyAfterStage(); !ok || n != 1 {
		t.Fatalf("PolicyAfterStage() = %d, %v, want 1, true", n, ok)
	}
	for _, d := range []string{"", "sha256:" + strings.Repeat("a", 64), "after-stage:", "after-stage:0", "after-stage:-1", "after-stage:+1", "after-stage:1x"} {
		st := Stage{PolicyDigest: d}
		if n, ok := st.PolicyAfterStage(); ok {
			t.Errorf("PolicyAfterStage(%q) = %d, true; want false", d, n)
		}
	}
}
