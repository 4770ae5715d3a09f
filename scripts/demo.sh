#!/usr/bin/env bash
# The whole mtls-migrate story on Online Boutique, in the sandbox (a real
# kube-apiserver, a real Prometheus and a simulated Istio data plane):
#
#   1. plan: read the telemetry and the cluster, decide per namespace;
#   2. apply every ready stage, one namespace at a time, with probes and
#      Prometheus health gates;
#   3. force the blocked frontend stage: it breaks the plaintext traffic from
#      outside, the tool sees the inbound request rate drop and rolls back;
#   4. status.
#
# Run it with `make demo` (which installs Prometheus and builds the
# kube-apiserver first). Takes about 3 minutes on 2 cores.
# Environment: DEMO_SOAK (default 10s) is each stage's soak time;
# DEMO_DIR keeps the sandbox's files (plan, logs) instead of a temp dir.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
SOAK=${DEMO_SOAK:-10s}
DIR=${DEMO_DIR:-$(mktemp -d -t mtls-migrate-demo.XXXXXX)}
BIN=$DIR/bin
mkdir -p "$BIN"

bold() { if [[ -t 1 ]]; then printf '\n\033[1m%s\033[0m\n' "$*"; else printf '\n%s\n' "$*"; fi; }
say() { printf '    %s\n' "$*"; }
# show prints a command, then runs it.
show() { printf '$ %s\n' "$*" | sed "s|$BIN/||; s|$DIR/|\$DIR/|g"; "$@"; }

SANDBOX_PID=
cleanup() {
	local rc=$?
	if [[ -n $SANDBOX_PID ]] && kill -0 "$SANDBOX_PID" 2>/dev/null; then
		bold "Tearing the sandbox down"
		kill -TERM "$SANDBOX_PID" 2>/dev/null || true
		wait "$SANDBOX_PID" 2>/dev/null || true
	fi
	if [[ -z ${DEMO_DIR:-} ]]; then rm -rf "$DIR"; else echo "files kept in $DIR"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold "== 0. Build mtls-migrate and the sandbox"
go build -o "$BIN/mtls-migrate" ./cmd/mtls-migrate
(cd sandbox && go build -o "$BIN/sandbox" ./cmd/sandbox)
say "built into $BIN"

bold "== 1. Start the sandbox with Online Boutique (11 namespaces, 18 flows, 1s scrapes)"
"$BIN/sandbox" up --scenario sandbox/scenarios/online-boutique.yaml --dir "$DIR/sb" --scrape-interval 1s >"$DIR/sandbox.log" 2>&1 &
SANDBOX_PID=$!
for _ in $(seq 1 180); do
	[[ -f $DIR/sb/ready ]] && break
	if ! kill -0 "$SANDBOX_PID" 2>/dev/null; then
		echo "the sandbox stopped; its log:" >&2
		tail -30 "$DIR/sandbox.log" >&2
		exit 1
	fi
	sleep 1
done
[[ -f $DIR/sb/ready ]] || { echo "the sandbox was not ready after 3 minutes; see $DIR/sandbox.log" >&2; exit 1; }
set -a
# shellcheck disable=SC1091
. "$DIR/sb/env"
set +a
export KUBECONFIG PROMETHEUS_URL
say "kube-apiserver: KUBECONFIG=$KUBECONFIG"
say "Prometheus:     $PROMETHEUS_URL"
say "ground truth:   $SANDBOX_FLOWS_URL (every flow's successes and failures)"
say "letting traffic run for 20s so Prometheus has telemetry to plan from..."
sleep 20

M="$BIN/mtls-migrate"
PLAN=$DIR/plan.yaml

bold "== 2. Plan: which namespace can go STRICT, and in what order?"
say "Nothing changes in the cluster. Short windows because the sandbox scrapes every second."
show "$M" plan --window 5m --gate-window 10s --soak 20s --out "$PLAN" | tee "$DIR/plan.txt"
echo
say "Why is frontend blocked? The plan says:"
yq -r '.stages[] | select(.namespace == "frontend") | .risks[] | "  - " + .code + ": " + .message' "$PLAN" || true

READY=$(awk '$4 == "ready" {print $1}' "$DIR/plan.txt")
FRONTEND=$(awk '$2 == "frontend" {print $1}' "$DIR/plan.txt")
[[ -n $READY && -n $FRONTEND ]] || { echo "the plan has no ready stage or no frontend stage" >&2; exit 1; }

bold "== 3. Apply every ready stage, one namespace at a time"
say "Each stage: pre-flight, snapshot, STRICT, probes (plaintext must now be refused),"
say "then health gates every 2s through a $SOAK soak. A failing gate rolls the stage back."
# The tool keeps its migration state (snapshots, stage records) in a ConfigMap here.
if command -v kubectl >/dev/null; then
	kubectl create namespace mtls-migrate >/dev/null 2>&1 || true
else
	server=$(awk '/server:/ {print $2; exit}' "$KUBECONFIG")
	token=$(awk '/token:/ {print $2; exit}' "$KUBECONFIG")
	curl -sk -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
		-d '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"mtls-migrate"}}' "$server/api/v1/namespaces"
fi
for n in $READY; do
	ns=$(awk -v n="$n" '$1 == n {print $2}' "$DIR/plan.txt")
	bold "-- stage $n: $ns"
	show "$M" apply --plan "$PLAN" --stage "$n" --soak "$SOAK" --settle 2s --gate-interval 2s \
		--state-namespace mtls-migrate ${ISTIOD_URL:+--istiod-url "$ISTIOD_URL"} 2>"$DIR/apply-$n.log"
done

bold "== 4. Force the blocked frontend stage (stage $FRONTEND) to see a rollback"
say "frontend-external takes plaintext from outside the mesh. STRICT cuts it off: those requests"
say "leave no error metric, they vanish: the plaintext-request-rate gate sees them go."
say "The tool restores the namespace's PeerAuthentications by itself and exits 3."
rc=0
show "$M" apply --plan "$PLAN" --stage "$FRONTEND" --soak 60s --settle 2s --gate-interval 2s \
	--state-namespace mtls-migrate ${ISTIOD_URL:+--istiod-url "$ISTIOD_URL"} --force --reason "demo: show the automatic rollback" 2>"$DIR/apply-$FRONTEND.log" || rc=$?
case $rc in
3) say "exit 3, as expected: a gate failed and the tool rolled the stage back; frontend takes plaintext again." ;;
0) echo "unexpected: the forced frontend stage passed" >&2; exit 1 ;;
*) echo "unexpected exit $rc; see $DIR/apply-$FRONTEND.log" >&2; tail -20 "$DIR/apply-$FRONTEND.log" >&2; exit 1 ;;
esac
say "Ground truth of the external flow (the sandbox counts every request):"
curl -s "$SANDBOX_FLOWS_URL" | jq -c '.[] | select(.name == "external-frontend") | {name, outcomes, lastOutcome}' 2>/dev/null || true

bold "== 5. Status"
if ! show "$M" status --plan "$PLAN" --state-namespace mtls-migrate 2>"$DIR/status.log"; then
	if grep -q "not built yet\|unknown flag" "$DIR/status.log"; then
		show "$M" status --plan "$PLAN" 2>&1 || say "(status is not built yet in this version)"
	else
		cat "$DIR/status.log" >&2
	fi
fi

bold "Done. Every ready namespace is STRICT; frontend stays PERMISSIVE until its external traffic moves behind the gateway."
