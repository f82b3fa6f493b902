#!/bin/bash
# Stop the pua-xmpp lab: kill exactly the PIDs recorded by start.sh.
#   tests/lab/stop.sh [RUN_DIR]      RUN_DIR default: $RUN_DIR or /tmp/pua-xmpp-lab
# The run dir (logs, DB, rendered configs) is kept for inspection.
RUN_DIR="${1:-${RUN_DIR:-/tmp/pua-xmpp-lab}}"
alive() { # running and not a zombie
	kill -0 "$1" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}
for name in kamailio prosody; do
	f="$RUN_DIR/$name.pid"
	[ -f "$f" ] || continue
	pid="$(cat "$f")"
	# only signal the PID if it still is the program we started (PID reuse)
	if [ -n "$pid" ] && alive "$pid" &&
		grep -qE "^($name|lua5\.[0-9]|setsid)\$" "/proc/$pid/comm" 2>/dev/null; then
		kill -TERM "$pid"
		for _ in $(seq 1 50); do
			alive "$pid" || break
			sleep 0.1
		done
		if alive "$pid"; then
			echo "$name ($pid) still alive after 5 s, sending KILL"
			kill -KILL "$pid"
		fi
		echo "stopped $name ($pid)"
	else
		echo "$name ($pid) not running"
	fi
	rm -f "$f"
done
