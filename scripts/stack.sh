#!/bin/bash
# The no-Docker quick start: Prosody + Kamailio (tests/lab/start.sh, the shipped configs) and
# the pua-xmpp gateway, all on loopback, in one run dir.
#   scripts/stack.sh up        install missing Debian packages (as root), build, start, wait for /health
#   scripts/stack.sh status    what runs, and the gateway's /health
#   scripts/stack.sh down      stop the gateway, Prosody and Kamailio by their recorded PIDs
# Environment (defaults):
#   MODE=notifier              notifier | pua (who serves SUBSCRIBEs for sip-xmpp.test)
#   STACK_DIR=/tmp/pua-xmpp-stack   run dir: rendered configs, logs, PID files, the store
#                              (wiped at each `up`, kept after `down`)
#   PUA_XMPP_BIN               an existing gateway binary; unset: cargo build --release -p pua-xmpp-actors
#   SECRET=gwsecret            XEP-0114 component secret (Prosody and gateway)
#   LOG_LEVEL=info             the gateway's log.level
#   XMPP_USERS="alice:alicepw zoe:zoepw"   accounts created on xmpp.test
#   LAB_IP=127.0.0.1           the loopback address everything listens on
# Ports are the lab's defaults: SIP 5060 (Kamailio) and 5080 (gateway),
# XMPP 5222 (c2s) and 5347 (component), HTTP 9080 (gateway).
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${STACK_DIR:-/tmp/pua-xmpp-stack}"
MODE="${MODE:-notifier}"
SECRET="${SECRET:-gwsecret}"
LOG_LEVEL="${LOG_LEVEL:-info}"
XMPP_USERS="${XMPP_USERS:-alice:alicepw zoe:zoepw}"
LAB_IP="${LAB_IP:-127.0.0.1}"
case "$LAB_IP" in 127.*) ;; *) echo "stack.sh: LAB_IP must be a loopback address" >&2; exit 1 ;; esac
GW_ADDR="$LAB_IP:5080"
GW_HTTP="$LAB_IP:9080"
# the same list as .ci/run
# (baresip-core: not needed by the stack; the end-to-end IM tests drive it as a SIP phone)
PKGS="kamailio kamailio-presence-modules kamailio-sqlite-modules kamailio-utils-modules
      prosody lua-unbound sqlite3 iproute2 baresip-core"

die() { echo "stack.sh: $*" >&2; exit 1; }
case "$STACK_DIR" in /*) ;; *) die "STACK_DIR must be an absolute path" ;; esac

alive() { # pid: running and not a zombie
	[ -n "$1" ] && kill -0 "$1" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}
gw_pid() { # the recorded gateway PID, if it still is a pua-xmpp process (PID reuse)
	local pid
	pid="$(cat "$STACK_DIR/gateway.pid" 2>/dev/null || true)"
	if alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = pua-xmpp ]; then
		echo "$pid"
	fi
}
health() { "$REPO/docker/pua-xmpp-health" "$GW_HTTP"; }

install_packages() {
	local missing="" p
	for p in $PKGS; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
	done
	# not needed by the stack, but by test-all.sh (the second quick-start command)
	if ! python3 -m pytest --version > /dev/null 2>&1; then
		if [ "$(id -u)" = 0 ]; then
			missing="$missing python3-pytest"
		else
			echo "stack.sh: note: no pytest for the end-to-end tests (apt-get install python3-pytest)" >&2
		fi
	fi
	[ -z "$missing" ] && return 0
	[ "$(id -u)" = 0 ] || die "missing Debian packages:$missing
  run this script as root once, or: sudo apt-get install -y --no-install-recommends$missing"
	echo "stack.sh: installing$missing"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
	# the packages start system-wide daemons on the wildcard address; the stack runs its own
	case "$missing" in *" prosody"*) service prosody stop > /dev/null 2>&1 || true ;; esac
	case "$missing " in *" kamailio "*) service kamailio stop > /dev/null 2>&1 || true ;; esac
}

gateway_binary() {
	if [ -n "${PUA_XMPP_BIN:-}" ]; then
		[ -x "$PUA_XMPP_BIN" ] || die "PUA_XMPP_BIN=$PUA_XMPP_BIN is not an executable"
		echo "$PUA_XMPP_BIN"
		return
	fi
	command -v cargo > /dev/null ||
		die "cargo not found: install Rust >= 1.80 (https://rustup.rs), or set PUA_XMPP_BIN"
	(cd "$REPO" && cargo build --release -p pua-xmpp-actors >&2) || die "cargo build failed"
	echo "${CARGO_TARGET_DIR:-$REPO/target}/release/pua-xmpp"
}

up() {
	case "$MODE" in notifier | pua) ;; *) die "MODE must be notifier or pua (got '$MODE')" ;; esac
	[ -z "$(gw_pid)" ] || die "already up (gateway pid $(gw_pid)); run: $0 down"
	install_packages
	local bin busy
	bin="$(gateway_binary)"
	case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
	busy=$(ss -Hlntu 2>/dev/null | awk -v ip="${LAB_IP//./[.]}" \
		'$5 ~ "^("ip"|0[.]0[.]0[.]0|[*]|[[]::[]]):(5080|9080)$" {print $1" "$5}' | tr '\n' ' ')
	[ -z "$busy" ] || die "gateway ports already in use: $busy"
	# Prosody + Kamailio; start.sh checks 5060/5222/5347 and wipes only a dir it made
	GW_MODE="$MODE" LAB_IP="$LAB_IP" GW_ADDR="$GW_ADDR" GW_HTTP="$GW_HTTP" SECRET="$SECRET" \
		XMPP_USERS="$XMPP_USERS" "$REPO/tests/lab/start.sh" "$STACK_DIR" > /dev/null
	# the keys of tests/e2e/conftest.py GATEWAY_TOML, for this lab
	cat > "$STACK_DIR/pua-xmpp.toml" <<TOML
# rendered by scripts/stack.sh (MODE=$MODE)
[sip]
listen = "$GW_ADDR"
server_address = "sip:$LAB_IP:5060"
gateway_domain = "sip-xmpp.test"

[xmpp]
component_domain = "sip.xmpp.test"
server = "$LAB_IP:5347"
secret = "$SECRET"

[mapping]
domain_separator = "*"

[presence]
mode = "$MODE"
subscribe_expires = 600

[store]
path = "$STACK_DIR/pua-xmpp.db"

[http]
listen = "$GW_HTTP"

[log]
level = "$LOG_LEVEL"
TOML
	"$bin" check-config "$STACK_DIR/pua-xmpp.toml" > /dev/null ||
		{ "$REPO/tests/lab/stop.sh" "$STACK_DIR" > /dev/null; die "invalid gateway config $STACK_DIR/pua-xmpp.toml"; }
	# own session (like start.sh): stopped by PID only
	(cd "$STACK_DIR" && exec setsid "$bin" --config "$STACK_DIR/pua-xmpp.toml" \
		< /dev/null > "$STACK_DIR/gateway.log" 2>&1) &
	echo $! > "$STACK_DIR/gateway.pid"
	local ok=0
	for _ in $(seq 1 150); do
		if health > /dev/null 2>&1; then ok=1; break; fi
		alive "$(cat "$STACK_DIR/gateway.pid")" || break
		sleep 0.2
	done
	if [ "$ok" != 1 ]; then
		echo "--- $STACK_DIR/gateway.log (last lines)" >&2
		tail -n 30 "$STACK_DIR/gateway.log" >&2 || true
		down > /dev/null
		die "the gateway did not report healthy within 30 s"
	fi
	cat <<MSG
pua-xmpp stack up (mode $MODE, run dir $STACK_DIR)
  gateway  pid $(cat "$STACK_DIR/gateway.pid")  sip $GW_ADDR, http://$GW_HTTP/health: $(health)
  prosody  pid $(cat "$STACK_DIR/prosody.pid")  kamailio pid $(cat "$STACK_DIR/kamailio.pid")

XMPP client: account alice@xmpp.test, password alicepw (also zoe@xmpp.test / zoepw),
  server $LAB_IP port 5222, no TLS (plaintext, PLAIN auth allowed).
  Add a SIP user as a contact: bob*sip.test@sip.xmpp.test   (= sip:bob@sip.test)
SIP phone: account sip:bob@sip.test, proxy and registrar $LAB_IP:5060 (UDP or TCP; no
  authentication). Watch and message the XMPP user sip:alice*xmpp.test@sip-xmpp.test;
  messages to bob reach the phone while it is registered.
Logs:  $STACK_DIR/gateway.log  $STACK_DIR/kamailio.log  $STACK_DIR/prosody.log
Stop:  $0 down
MSG
}

down() {
	local pid
	pid="$(gw_pid)"
	if [ -n "$pid" ]; then
		kill -TERM "$pid" # the gateway flushes its store at SIGTERM
		for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
		if alive "$pid"; then
			echo "gateway ($pid) still alive after 10 s, sending KILL"
			kill -KILL "$pid"
		fi
		echo "stopped gateway ($pid)"
	else
		echo "gateway not running"
	fi
	rm -f "$STACK_DIR/gateway.pid"
	if [ -d "$STACK_DIR" ]; then
		"$REPO/tests/lab/stop.sh" "$STACK_DIR"
	fi
}

status() {
	local rc=0 n pid mode
	mode="$(sed -n 's/^GW_MODE=//p' "$STACK_DIR/lab.env" 2>/dev/null || true)"
	echo "run dir $STACK_DIR${mode:+ (mode $mode)}"
	for n in prosody kamailio; do
		pid="$(cat "$STACK_DIR/$n.pid" 2>/dev/null || true)"
		if alive "$pid"; then echo "  $n: running (pid $pid)"; else echo "  $n: stopped"; rc=3; fi
	done
	pid="$(gw_pid)"
	if [ -n "$pid" ]; then
		if body="$(health 2>&1)"; then
			echo "  gateway: running (pid $pid), health $body"
		else
			echo "  gateway: running (pid $pid), NOT healthy: $body"
			rc=1
		fi
	else
		echo "  gateway: stopped"
		rc=3
	fi
	return $rc
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
*)
	sed -n '2,16s/^# \{0,1\}//p' "$0" >&2
	exit 2
	;;
esac
