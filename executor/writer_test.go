package executor

import (
	"encoding/json"
	"strings"
	"testing"
)

// The apply body must carry the mode as Istio's enum name: the CRD schema
// rejects the protobuf number.
func TestApplyConfigEncodesTheModeByName(t *testing.T) {
	p := testPlan(false, "")
	r := &run{o: Options{Plan: p}, stage: &p.Stages[0]}
	b, err := json.Marshal(r.applyConfig())
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"apiVersion":"security.istio.io/v1"`, `"mode":"STRICT"`, `"app.kubernetes.io/managed-by":"mtls-migrate"`} {
		if !strings.Contains(s, want) {
			t.Fatalf("%s lacks %s", s, want)
		}
	}
}
