#!/usr/bin/env bash
# Installs the system tools the demo, the tests and the rigs use, when they are missing.
# Sourced by scripts/*.sh. Installs only as root with apt-get; otherwise names what to install.

# need_cmd COMMAND DEBIAN_PACKAGE — collects packages whose command is missing.
_sm_missing=()
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || _sm_missing+=("$2")
}

# ensure_system_tools — iproute2 (ip, tc), iperf3, nftables, procps (sysctl: the NAT lab's
# routers forward), python3, ping.
ensure_system_tools() {
  _sm_missing=()
  need_cmd ip iproute2
  need_cmd tc iproute2
  need_cmd iperf3 iperf3
  need_cmd nft nftables
  need_cmd sysctl procps
  need_cmd python3 python3
  need_cmd ping iputils-ping
  [ ${#_sm_missing[@]} -eq 0 ] && return 0
  local pkgs
  pkgs=$(printf '%s\n' "${_sm_missing[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing missing system packages: $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  else
    echo "==> missing system packages: $pkgs (install them as root: apt-get install -y $pkgs)"
  fi
}

# ensure_rust — the machine's Rust toolchain must be there; name the fix if not.
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Install Rust (https://rustup.rs) and run this again." >&2
    exit 1
  fi
}

# ensure_fuzz — a nightly toolchain and cargo-fuzz, for the fuzz step of scripts/test.sh.
# Installs what is missing (rustup nightly, minimal profile; `cargo install cargo-fuzz
# --locked`). When either cannot be had, prints one line saying why and returns 1: fuzzing is
# then skipped, never failed.
ensure_fuzz() {
  local why=""
  if ! command -v rustup >/dev/null 2>&1; then
    why="rustup not found (nightly cannot be installed)"
  elif ! rustup toolchain list 2>/dev/null | grep -q '^nightly' \
       && ! rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    why="no nightly toolchain (rustup toolchain install nightly failed)"
  elif ! cargo fuzz --version >/dev/null 2>&1 \
       && ! cargo install cargo-fuzz --locked >/dev/null 2>&1; then
    why="cargo-fuzz missing and 'cargo install cargo-fuzz --locked' failed"
  fi
  if [ -n "$why" ]; then
    echo "skipped fuzzing: $why"
    return 1
  fi
}
