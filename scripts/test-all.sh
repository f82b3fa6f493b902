#!/usr/bin/env bash
# Runs every test of pua-xmpp: formatting and lint gates, the Rust unit/integration tests,
# and the end-to-end tests against real Prosody and Kamailio on loopback.
# One release build is shared by all of them (cargo test --release reuses its artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# One release build: `cargo test --release` also builds the binaries (the actors' integration
# tests run the real `pua-xmpp`), and the end-to-end tests below use that same binary.
step "cargo test --release (unit, property, in-process integration; builds the gateway)"
cargo test --release --workspace
test -x target/release/pua-xmpp

# Bounded fuzzing (issue 6): every cargo-fuzz target for FUZZ_SECS (20 s) each, ASan build
# (fuzz/README.md has the measured costs: a cold build is ~6 min of CPU, the runs ~2.5 min). A
# crash fails here and leaves its input in fuzz/artifacts/<target>/. SKIP_FUZZ=1 skips it.
if [ "${SKIP_FUZZ:-0}" = 1 ]; then
	echo "SKIP_FUZZ=1: fuzzing not run"
else
	step "bounded fuzzing: every fuzz target for ${FUZZ_SECS:-20} s (scripts/fuzz.sh)"
	FUZZ_SECS=${FUZZ_SECS:-20} ./scripts/fuzz.sh
fi

if [ "${SKIP_E2E:-0}" = 1 ]; then
	echo "SKIP_E2E=1: end-to-end tests not run"
	exit 0
fi
step "end-to-end tests with real Prosody and Kamailio"
export PUA_XMPP_BIN="${PUA_XMPP_BIN:-$PWD/target/release/pua-xmpp}"
export PUA_E2E_REQUIRE_GATEWAY=1
python3 -m pytest -q -rs tests/e2e

# IPv6 (issue 16): the same lab on ::1, for the tests that are about IPv6 (they skip in the
# IPv4 run above). A machine without IPv6 loopback fails here, loudly, rather than skipping.
step "end-to-end tests on IPv6 loopback (LAB_IP=::1)"
ip -6 addr show dev lo | grep -q 'inet6 ::1/' || { echo "no ::1 on lo: cannot run the IPv6 tests" >&2; exit 1; }
LAB_IP=::1 python3 -m pytest -q -rs tests/e2e/test_ipv6.py
