#!/bin/bash
# Start the pua-xmpp end-to-end lab: Prosody 0.12 + Kamailio 5.6 on loopback,
# using the shipped config/prosody.cfg.lua and config/kamailio.cfg.
#   tests/lab/start.sh [RUN_DIR]      RUN_DIR default: $RUN_DIR or /tmp/pua-xmpp-lab
# Environment (defaults):
#   LAB_IP=127.0.0.1        address every server binds to
#   GW_ADDR=$LAB_IP:5080    where Kamailio relays sip-xmpp.test requests (the gateway's SIP)
#   GW_HTTP=$LAB_IP:9080    the gateway's HTTP API (PUA mode: POST /pua/req_winfo)
#   GW_MODE=notifier        notifier | pua  (who serves SUBSCRIBEs to sip-xmpp.test)
#   GW_HTTP_TOKEN=          bearer token Kamailio sends to GW_HTTP (the gateway's
#                           http.token); empty = none. Not written to lab.env.
#   GW_HTTP_CA=             PEM file: Kamailio calls GW_HTTP over https and verifies
#                           the gateway's certificate with it; empty = plain http
#   SECRET=gwsecret         XEP-0114 secret of component sip.xmpp.test
#   XMPP_USERS="alice:alicepw zoe:zoepw"   accounts created on xmpp.test
#   TLS_CFG=                Kamailio tls.cfg (certificates made by the caller): set, Kamailio
#                           also listens tls:$LAB_IP:5061 and relays sip-xmpp.test to
#                           GW_TLS_ADDR over TLS only (kamailio -A WITH_TLS, issue 16)
#   GW_TLS_ADDR=$LAB_IP:5081  the gateway's TLS listener (with TLS_CFG)
#   GW2_ADDR=               a second gateway's SIP address (issue 17, active/standby): set,
#                           Kamailio runs with -A WITH_HA and dispatches sip-xmpp.test to
#                           whichever of GW_ADDR / GW2_ADDR answers its OPTIONS probes
#                           (list in RUN_DIR/dispatcher.list); with TLS_CFG the list names
#                           their TLS listeners GW_TLS_ADDR / GW2_TLS_ADDR (;transport=tls)
#   GW2_TLS_ADDR=           the second gateway's TLS listener (GW2_ADDR and TLS_CFG set):
#                           default GW2_ADDR's host, port 5081
#   GW2_HTTP=               the second gateway's HTTP API (with GW2_ADDR; PUA mode req_winfo
#                           tries GW_HTTP, then GW2_HTTP)
#   LAB_IP may also be ::1 (IPv6 lab; Kamailio then listens on [::1])
# Packages are NOT installed here (CI does it, see tests/lab/README.md); a missing
# program or module is reported by name. The run dir is wiped and recreated
# (only if start.sh made it): rendered prosody config, sqlite DB, logs, PID files.
# Stop with tests/lab/stop.sh [RUN_DIR]; it kills exactly the recorded PIDs.
set -euo pipefail
# kamailio and kamcmd live in /usr/sbin, which a non-root PATH may lack
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
RUN_DIR="${1:-${RUN_DIR:-/tmp/pua-xmpp-lab}}"
LAB_IP="${LAB_IP:-127.0.0.1}"
GW_MODE="${GW_MODE:-notifier}"
GW_HTTP_TOKEN="${GW_HTTP_TOKEN:-}"
GW_HTTP_CA="${GW_HTTP_CA:-}"
SECRET="${SECRET:-gwsecret}"
XMPP_USERS="${XMPP_USERS:-alice:alicepw zoe:zoepw}"
TLS_CFG="${TLS_CFG:-}"
GW2_ADDR="${GW2_ADDR:-}"
GW2_HTTP="${GW2_HTTP:-}"
# IPv6: addresses in brackets wherever a port follows ([::1]:5060)
case "$LAB_IP" in *:*) LAB_HOST="[$LAB_IP]" ;; *) LAB_HOST="$LAB_IP" ;; esac
GW_ADDR="${GW_ADDR:-$LAB_HOST:5080}"
GW_HTTP="${GW_HTTP:-$LAB_HOST:9080}"
GW_TLS_ADDR="${GW_TLS_ADDR:-$LAB_HOST:5081}"
GW2_TLS_ADDR="${GW2_TLS_ADDR:-}"
[ -z "$GW2_ADDR" ] || [ -n "$GW2_TLS_ADDR" ] || GW2_TLS_ADDR="${GW2_ADDR%:*}:5081"
KAMAILIO_CFG="$REPO/config/kamailio.cfg"
PROSODY_CFG="$REPO/config/prosody.cfg.lua"
# Debian multiarch dir (x86_64, aarch64, ...), else the classic locations
KMOD_DIR=""
for d in /usr/lib/*/kamailio/modules /usr/lib64/kamailio/modules /usr/lib/kamailio/modules; do
	[ -f "$d/tm.so" ] && { KMOD_DIR="$d"; break; }
done
KMOD_DIR="${KMOD_DIR:-/usr/lib/x86_64-linux-gnu/kamailio/modules}"
die() { echo "start.sh: $*" >&2; exit 1; }
case "$GW_MODE" in notifier) KMODE=GW_MODE_NOTIFIER ;; pua) KMODE=GW_MODE_PUA ;;
	*) die "GW_MODE must be notifier or pua (got '$GW_MODE')" ;; esac
[ -z "$GW2_ADDR" ] || [ -n "$GW2_HTTP" ] || die "GW2_ADDR needs GW2_HTTP"
case "$RUN_DIR" in /*) ;; *) die "RUN_DIR must be an absolute path" ;; esac
case "$LAB_IP" in 127.*|::1) ;; *) die "LAB_IP must be a loopback address (got '$LAB_IP')" ;; esac

# ---- prerequisites (installed by CI: see tests/lab/README.md) ---------------
missing=""
need_cmd() { # command package
	command -v "$1" > /dev/null 2>&1 || missing="$missing\n  program $1 (Debian package $2)"
}
need_file() { # path package
	[ -e "$1" ] || missing="$missing\n  file $1 (Debian package $2)"
}
need_cmd kamailio kamailio
need_cmd kamcmd kamailio
need_cmd prosody prosody
need_cmd prosodyctl prosody
need_cmd sqlite3 sqlite3
need_cmd ss iproute2
need_cmd setsid util-linux
for m in tm sl rr maxfwd textops siputils pv xlog ctl usrloc registrar; do need_file "$KMOD_DIR/$m.so" kamailio; done
need_file "$KMOD_DIR/presence.so" kamailio-presence-modules
need_file "$KMOD_DIR/presence_xml.so" kamailio-presence-modules
need_file "$KMOD_DIR/db_sqlite.so" kamailio-sqlite-modules
need_file /usr/share/kamailio/db_sqlite/presence-create.sql kamailio-sqlite-modules
need_file "$KMOD_DIR/http_client.so" kamailio-utils-modules
[ -z "$TLS_CFG" ] || need_file "$KMOD_DIR/tls.so" kamailio-tls-modules
[ -z "$GW2_ADDR" ] || need_file "$KMOD_DIR/dispatcher.so" kamailio
[ -z "$TLS_CFG" ] || need_file "$TLS_CFG" "the caller (TLS_CFG)"
need_file "$KAMAILIO_CFG" "this repository"
need_file "$PROSODY_CFG" "this repository"
[ -z "$missing" ] || die "missing prerequisites:$(echo -e "$missing")
install them with: apt-get install -y --no-install-recommends kamailio kamailio-presence-modules kamailio-sqlite-modules kamailio-utils-modules prosody lua-unbound sqlite3 iproute2"

# ---- fresh run dir -----------------------------------------------------------
for n in kamailio prosody; do
	if [ -f "$RUN_DIR/$n.pid" ] && kill -0 "$(cat "$RUN_DIR/$n.pid")" 2>/dev/null; then
		die "$n is still running (pid $(cat "$RUN_DIR/$n.pid")): run $HERE/stop.sh $RUN_DIR first"
	fi
done
if [ -e "$RUN_DIR" ]; then
	# only ever delete a directory this script created
	[ -f "$RUN_DIR/.pua-xmpp-lab" ] || [ -z "$(ls -A "$RUN_DIR")" ] ||
		die "$RUN_DIR exists and was not made by start.sh; refusing to wipe it"
	rm -rf "$RUN_DIR"
fi
mkdir -p "$RUN_DIR/certs" "$RUN_DIR/prosody-data"
touch "$RUN_DIR/.pua-xmpp-lab"

# also catches a system-wide prosody/kamailio bound to the wildcard address
busy=$(ss -Hlntu 2>/dev/null | awk -v ip="$LAB_HOST" \
	'index($5, ip":") == 1 || $5 ~ "^(0[.]0[.]0[.]0|[*]|[[]::[]]):" {split($5, a, ":"); p = a[length(a)]; if (p == 5060 || p == 5061 || p == 5222 || p == 5347) print $1" "$5}' | tr '\n' ' ')
[ -z "$busy" ] || die "ports already in use: $busy(a system service? e.g. service prosody stop)"

# ---- configs ------------------------------------------------------------------
sed -e "s#@RUN_DIR@#$RUN_DIR#g" -e "s#@LAB_IP@#$LAB_IP#g" -e "s#@SECRET@#$SECRET#g" \
	"$PROSODY_CFG" > "$RUN_DIR/prosody.cfg.lua"
# with TLS the presence server's Contact is its TLS address: in-dialog requests use TLS
SRV_URI="sip:$LAB_HOST:5060"
[ -z "$TLS_CFG" ] || SRV_URI="sip:$LAB_HOST:5061;transport=tls"
KDEFS=(-A "LAB_IP=$LAB_HOST" -A "SRV_URI=\"$SRV_URI\"" -A "GW_ADDR=\"$GW_ADDR\""
	-A "GW_HTTP=\"$GW_HTTP\"" -A "DBURL=\"sqlite:///$RUN_DIR/kamailio.sqlite\""
	-A "CTL_SOCK=\"unix:$RUN_DIR/kamailio_ctl\"" -A "MPATH=\"$KMOD_DIR/\"" -A "$KMODE")
if [ -n "$GW_HTTP_TOKEN" ]; then
	case "$GW_HTTP_TOKEN" in *[!A-Za-z0-9._~+/=-]*) die "GW_HTTP_TOKEN: only A-Z a-z 0-9 - . _ ~ + / =" ;; esac
	KDEFS+=(-A "GW_HTTP_TOKEN=\"$GW_HTTP_TOKEN\"")
fi
if [ -n "$GW_HTTP_CA" ]; then
	[ -r "$GW_HTTP_CA" ] || die "GW_HTTP_CA: cannot read $GW_HTTP_CA"
	KDEFS+=(-A "GW_HTTP_CA=\"$GW_HTTP_CA\"")
fi
case "$LAB_IP" in *:*) KDEFS+=(-A WITH_IPV6) ;; esac
if [ -n "$TLS_CFG" ]; then
	KDEFS+=(-A WITH_TLS -A "TLS_CFG=\"$TLS_CFG\"" -A "GW_TLS_ADDR=\"$GW_TLS_ADDR\"")
fi
if [ -n "$GW2_ADDR" ]; then
	# dispatcher set 1: both gateways, GW_ADDR first (algorithm 8 prefers it while both
	# answer); with TLS their TLS listeners, so probes and relays use TLS only
	if [ -n "$TLS_CFG" ]; then
		DS1="sip:$GW_TLS_ADDR;transport=tls" DS2="sip:$GW2_TLS_ADDR;transport=tls"
	else
		DS1="sip:$GW_ADDR" DS2="sip:$GW2_ADDR"
	fi
	printf '# setid destination flags priority\n1 %s 0 10\n1 %s 0 5\n' "$DS1" "$DS2" \
		> "$RUN_DIR/dispatcher.list"
	KDEFS+=(-A WITH_HA -A "DS_LIST=\"$RUN_DIR/dispatcher.list\"" -A "GW2_ADDR=\"$GW2_ADDR\""
		-A "GW2_HTTP=\"$GW2_HTTP\"" -A "GW2_TLS_ADDR=\"$GW2_TLS_ADDR\"" -A "RPC_FIFO=\"$RUN_DIR/kamailio_rpc.fifo\"")
fi
cat > "$RUN_DIR/lab.env" <<ENV
LAB_IP=$LAB_IP
GW_ADDR=$GW_ADDR
GW_HTTP=$GW_HTTP
GW_MODE=$GW_MODE
GW_TLS_ADDR=$GW_TLS_ADDR
GW2_ADDR=$GW2_ADDR
GW2_HTTP=$GW2_HTTP
GW2_TLS_ADDR=$GW2_TLS_ADDR
TLS_CFG=$TLS_CFG
SECRET=$SECRET
XMPP_USERS="$XMPP_USERS"
KAMAILIO_CFG=$KAMAILIO_CFG
ENV

# ---- XMPP accounts (written directly to the data dir; Prosody not running) ----
for u in $XMPP_USERS; do
	prosodyctl --config "$RUN_DIR/prosody.cfg.lua" register "${u%%:*}" xmpp.test "${u#*:}" \
		> "$RUN_DIR/prosodyctl.out" 2>&1 || { cat "$RUN_DIR/prosodyctl.out" >&2; die "prosodyctl register ${u%%:*} failed"; }
done

# ---- presence DB ---------------------------------------------------------------
sqlite3 "$RUN_DIR/kamailio.sqlite" < /usr/share/kamailio/db_sqlite/standard-create.sql
sqlite3 "$RUN_DIR/kamailio.sqlite" < /usr/share/kamailio/db_sqlite/presence-create.sql
sqlite3 "$RUN_DIR/kamailio.sqlite" 'PRAGMA journal_mode=WAL;' > /dev/null

listening() { # proto(t|u) ip:port
	ss -Hln"$1" 2>/dev/null | awk '{print $4}' | grep -qxF "$2"
}
wait_for() { # description command...
	local what="$1"; shift
	for _ in $(seq 1 100); do "$@" && return 0; sleep 0.1; done
	echo "start.sh: timeout waiting for $what" >&2; return 1
}
fail() {
	echo "--- $1 (last lines)" >&2; tail -n 30 "$1" >&2 || true
	"$HERE/stop.sh" "$RUN_DIR" >&2 || true
	exit 1
}

# ---- Prosody -------------------------------------------------------------------
# setsid: own session, so a test harness killing its process group leaves the
# lab alone; stop.sh kills by PID.  setsid execs (same PID) when not a group leader.
setsid prosody -F --config "$RUN_DIR/prosody.cfg.lua" < /dev/null > "$RUN_DIR/prosody.out" 2>&1 &
echo $! > "$RUN_DIR/prosody.pid"
wait_for "prosody c2s $LAB_HOST:5222" listening t "$LAB_HOST:5222" || fail "$RUN_DIR/prosody.log"
wait_for "prosody component $LAB_HOST:5347" listening t "$LAB_HOST:5347" || fail "$RUN_DIR/prosody.log"

# ---- Kamailio ------------------------------------------------------------------
kamailio -c -f "$KAMAILIO_CFG" "${KDEFS[@]}" > "$RUN_DIR/kamailio-check.out" 2>&1 ||
	fail "$RUN_DIR/kamailio-check.out"
setsid kamailio -DD -E -f "$KAMAILIO_CFG" "${KDEFS[@]}" -Y "$RUN_DIR" -w "$RUN_DIR" \
	-m 64 -M 16 < /dev/null > "$RUN_DIR/kamailio.log" 2>&1 &
echo $! > "$RUN_DIR/kamailio.pid"
wait_for "kamailio udp $LAB_HOST:5060" listening u "$LAB_HOST:5060" || fail "$RUN_DIR/kamailio.log"
wait_for "kamailio tcp $LAB_HOST:5060" listening t "$LAB_HOST:5060" || fail "$RUN_DIR/kamailio.log"
if [ -n "$TLS_CFG" ]; then
	wait_for "kamailio tls $LAB_HOST:5061" listening t "$LAB_HOST:5061" || fail "$RUN_DIR/kamailio.log"
fi
KAMCMD=(kamcmd -s "unix:$RUN_DIR/kamailio_ctl")
wait_for "kamailio ctl socket" "${KAMCMD[@]}" core.uptime > /dev/null 2>&1 || fail "$RUN_DIR/kamailio.log"

# Name resolution without /etc/hosts: permanent entries in Kamailio's DNS cache
# (flag 2 = permanent). Both test domains resolve to this proxy, as real DNS
# for a gateway domain would; the proxy then relays sip-xmpp.test to GW_ADDR.
for d in sip.test sip-xmpp.test; do
	case "$LAB_IP" in
	*:*) "${KAMCMD[@]}" dns.add_aaaa "$d" 86400 "$LAB_IP" 2 > /dev/null ;;
	*) "${KAMCMD[@]}" dns.add_a "$d" 86400 "$LAB_IP" 2 > /dev/null ;;
	esac
	for t in udp tcp; do
		"${KAMCMD[@]}" dns.add_srv "_sip._$t.$d" 86400 10 10 5060 "$d" 2 > /dev/null
	done
done

for n in prosody kamailio; do
	kill -0 "$(cat "$RUN_DIR/$n.pid")" 2>/dev/null || fail "$RUN_DIR/$n.log"
done
cat <<MSG
pua-xmpp lab up (run dir $RUN_DIR, mode $GW_MODE)
  prosody  pid $(cat "$RUN_DIR/prosody.pid")  c2s $LAB_IP:5222 (xmpp.test: ${XMPP_USERS})
                 component sip.xmpp.test $LAB_IP:5347 secret $SECRET
  kamailio pid $(cat "$RUN_DIR/kamailio.pid")  sip:$LAB_IP:5060 udp+tcp (sip.test), sip-xmpp.test -> $GW_ADDR, http $GW_HTTP
  logs: $RUN_DIR/prosody.log $RUN_DIR/kamailio.log
MSG
