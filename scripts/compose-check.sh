#!/bin/bash
# Builds and runs the docker-compose stack for real and checks presence both ways through it
# (tests/compose/check_stack.py); with --ha the `ha` profile instead, plus kill -9 of the
# active gateway twice (takeover, `restart: always` bringing it back as the standby).
# Not part of scripts/test-all.sh / .ci/run: it needs a container engine.
#   scripts/compose-check.sh [--ha] [--keep]
#     --ha     the `ha` profile (postgres, prosody, kamailio-ha, pua-xmpp-a, pua-xmpp-b)
#     --keep   leave the stack running at the end (default: `down -v`)
# Engine: Docker (`docker compose` or `docker-compose`), or podman with Debian's
# docker-compose 1.29: without DOCKER_HOST and a docker binary, the script starts
# `podman system service` on a socket of its own, plus a loop running the containers' health
# checks (podman runs them from systemd timers, absent here); both are killed at the end.
# The build context is a throwaway copy of the work tree with the crates vendored
# (`cargo vendor --locked`: crates cannot be downloaded inside the build containers here),
# removed at the end. Base images (debian:bookworm-slim, rust:1.95-bookworm) must exist.
# Environment: PUA_SUBNET (default 172.28.53), COMPOSE_PROJECT_NAME (default pua-xmpp),
# COMPOSE_CHECK_DIR (work dir, default a new /tmp/pua-compose-check.XXXX).
set -euo pipefail
HA=0
KEEP=0
for a in "$@"; do
	case "$a" in
	--ha) HA=1 ;;
	--keep) KEEP=1 ;;
	*) echo "usage: $0 [--ha] [--keep]" >&2; exit 2 ;;
	esac
done
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${COMPOSE_CHECK_DIR:-$(mktemp -d /tmp/pua-compose-check.XXXX)}"
BUILD="$WORK/src"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-pua-xmpp}"
export PUA_SUBNET="${PUA_SUBNET:-172.28.53}"
say() { echo "[compose-check $(date +%H:%M:%S)] $*"; }
PIDS=()   # background helpers (podman service, health loop), killed at exit
ALL=()
cleanup() {
	rc=$?
	set +e
	if [ "$KEEP" = 0 ] && [ "${#ALL[@]}" -gt 0 ] && [ -f "$BUILD/docker-compose.yml" ]; then
		say "down -v"
		"${ALL[@]}" down -v > "$WORK/down.log" 2>&1
	fi
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	[ "$KEEP" = 1 ] || rm -rf "$BUILD"   # --keep: the bind-mounted config lives there
	[ "$rc" = 0 ] && [ "$KEEP" = 0 ] && rm -rf "$WORK"
	[ "$rc" = 0 ] || say "FAILED (rc $rc); logs in $WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- engine
if [ -z "${DOCKER_HOST:-}" ] && docker info > /dev/null 2>&1; then
	ENGINE=docker
	if docker compose version > /dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
elif command -v podman > /dev/null; then
	ENGINE=podman
	COMPOSE=(docker-compose)   # Debian's 1.29 (podman-compose 1.0.3 cannot read the file)
	if [ -z "${DOCKER_HOST:-}" ]; then
		sock="$WORK/podman.sock"
		podman system service --time=0 "unix://$sock" > "$WORK/podman-service.log" 2>&1 &
		PIDS+=($!)
		export DOCKER_HOST="unix://$sock"
		for _ in $(seq 1 50); do [ -S "$sock" ] && break; sleep 0.1; done
		[ -S "$sock" ] || { echo "podman system service did not start" >&2; exit 1; }
	fi
	# podman runs HEALTHCHECKs from systemd timers; without systemd, run them here
	while :; do
		for c in $(podman ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"); do
			podman healthcheck run "$c" > /dev/null 2>&1 || true
		done
		sleep 3
	done &
	PIDS+=($!)
else
	echo "compose-check: no container engine (docker daemon or podman)" >&2
	exit 1
fi
COMPOSE+=(-f "$BUILD/docker-compose.yml")
ALL=("${COMPOSE[@]}" --profile ha)   # down: every service of either stack
if [ "$HA" = 1 ]; then
	UP=("${COMPOSE[@]}" --profile ha up --build -d postgres prosody kamailio-ha pua-xmpp-a pua-xmpp-b)
else
	UP=("${COMPOSE[@]}" up --build -d)
fi

# --- build context: the work tree (committed or not, without ignored files) + vendored crates
say "build copy in $BUILD"
mkdir -p "$BUILD/.cargo"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
	tar --null -T - --ignore-failed-read -c 2> /dev/null) | tar -x -C "$BUILD"
(cd "$BUILD" && cargo vendor --locked vendor > .cargo/config.toml 2> "$WORK/vendor.log")

# --- up
say "down -v (leftovers), then ${UP[*]:${#COMPOSE[@]}}"
"${ALL[@]}" down -v > "$WORK/down0.log" 2>&1 || true
t0=$(date +%s)
"${UP[@]}" > "$WORK/up.log" 2>&1 || { tail -40 "$WORK/up.log"; exit 1; }
say "up --build took $(($(date +%s) - t0)) s"

# --- every container of the project healthy
healthy() {
	local ids h n=0
	ids=$($ENGINE ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
	for c in $ids; do
		h=$($ENGINE inspect --format '{{.State.Health.Status}}' "$c" 2>/dev/null)
		[ "$h" = healthy ] || return 1
		n=$((n + 1))
	done
	[ "$n" -ge 5 ] || { [ "$HA" = 0 ] && [ "$n" -ge 3 ]; }
}
for _ in $(seq 1 120); do healthy && break; sleep 1; done
"${COMPOSE[@]}" ps
healthy || { say "not all healthy after 120 s"; "${ALL[@]}" logs --tail 30 > "$WORK/logs.txt" 2>&1; exit 1; }
say "all healthy after $(($(date +%s) - t0)) s (build included)"
$ENGINE images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'pua-xmpp' || true

# --- presence both ways (and the takeovers)
args=(--project "$COMPOSE_PROJECT_NAME" --subnet "$PUA_SUBNET" --engine "$ENGINE")
[ "$HA" = 1 ] && args+=(--ha)
if ! python3 "$REPO/tests/compose/check_stack.py" "${args[@]}"; then
	"${ALL[@]}" logs --tail 60 > "$WORK/logs.txt" 2>&1
	exit 1
fi
say "OK"
