#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# ShadowMesh performance rig (issue 3): on one machine, two network namespaces joined by a
# veth pair; measures the raw veth, ShadowMesh with the io_uring backend and ShadowMesh with
# the poll backend, interleaved per repetition, and prints a Markdown table of medians.
#
# Network rule (DESIGN.md "Testing topology"): underlay 198.51.100.0/24 only, overlay
# 100.64.0.0/10 and fd00::/8 only; the trap below removes every namespace, process and file
# this script made, on exit, Ctrl-C or failure. Every loop is bounded in count and time.
#
# Both ShadowMesh backends run side by side in each namespace (io_uring on UDP 51820, TUN smu0,
# 100.64.1.0/24; poll on UDP 51821, TUN smp0, 100.64.2.0/24) so the paths can alternate without
# restarting daemons; the idle one sleeps in the kernel.
#
# Usage: perf-scripts/rig.sh [--workers "1 2"] [--reps 3] [--secs 5] [--udp-rate 500M]
#                            [--quick] [--out DIR] [--bin DIR]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
STAT="$HERE/rigstat.py"

PROG=rig
# shellcheck source=lib.sh
. "$HERE/lib.sh"

BIN="${SHADOWMESH_BIN:-$REPO/target/release}"
WORKERS_LIST="1 2"
REPS=3
SECS=5
UDP_RATE=500M
OUT=""
QUICK=0
ECHO_COUNT=2000        # idle RTT probes
ECHO_INTERVAL_US=500
LOAD_ECHO_COUNT=500    # RTT probes while a TCP stream runs
LOAD_ECHO_INTERVAL_US=2000

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options:
  --workers LIST   dataplane worker counts to measure, e.g. "1 2" or 1,2 (default: 1 2)
  --reps N         repetitions of every measurement, medians reported (default: 3)
  --secs S         seconds per iperf3 run, after a 1 s omitted warm-up (default: 5)
  --udp-rate R     UDP offered load, iperf3 -b syntax (default: 500M)
  --quick          1 repetition x 2 s (smoke test)
  --out DIR        results directory (default: perf-scripts/results/<date>-<host>)
  --bin DIR        where shadowmesh and shadowmesh-dataplane are (default: target/release,
                   or \$SHADOWMESH_BIN)
EOF
}


while [ $# -gt 0 ]; do
    case "$1" in
        --workers) [ $# -ge 2 ] || die "--workers needs a value"; WORKERS_LIST=${2//,/ }; shift 2 ;;
        --reps) [ $# -ge 2 ] || die "--reps needs a value"; REPS=$2; shift 2 ;;
        --secs) [ $# -ge 2 ] || die "--secs needs a value"; SECS=$2; shift 2 ;;
        --udp-rate) [ $# -ge 2 ] || die "--udp-rate needs a value"; UDP_RATE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
        --bin) [ $# -ge 2 ] || die "--bin needs a value"; BIN=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
if [ "$QUICK" = 1 ]; then REPS=1; SECS=2; ECHO_COUNT=500; LOAD_ECHO_COUNT=200; fi

in_range "$REPS" 1 20 || die "--reps: expected 1..20, got '$REPS'"
in_range "$SECS" 1 120 || die "--secs: expected 1..120, got '$SECS'"
[[ "$UDP_RATE" =~ ^[0-9]+(\.[0-9]+)?[KMG]?$ ]] || die "--udp-rate: expected e.g. 500M or 1G, got '$UDP_RATE'"
read -r -a WORKERS <<<"$WORKERS_LIST"
in_range "${#WORKERS[@]}" 1 8 || die "--workers: expected 1..8 values"
for w in "${WORKERS[@]}"; do
    in_range "$w" 1 64 || die "--workers: expected numbers 1..64, got '$w'"
done

base_prereqs

lib_init "smrig$$"
results_dir
make_topology

# ---------------------------------------------------------------- measurements

# One full set of measurements on one path.
measure() { # workers rep path target
    local w=$1 rep=$2 path=$3 dst=$4
    local d="$WORK/m-w$w-r$rep-$path"
    local f
    log "workers=$w rep=$rep path=$path -> $dst"
    [ "$path" = raw ] || check_alive "$path" "$w"

    # TCP, 1 stream and 4 streams, with stats snapshots for enters per packet.
    local kind
    for kind in tcp1 tcp4 udp; do
        f="$d-$kind.json"
        [ "$path" = raw ] || snap "$path" "$d-$kind-s0"
        case $kind in
            tcp1) iperf "$f" "$dst" -t "$SECS" -O 1 || true ;;
            tcp4) iperf "$f" "$dst" -t "$SECS" -O 1 -P 4 || true ;;
            udp) iperf "$f" "$dst" -t "$SECS" -u -l 1300 -b "$UDP_RATE" || true ;;
        esac
        if [ "$path" != raw ]; then
            snap "$path" "$d-$kind-s1"
            python3 "$STAT" enters "$d-$kind-s0-1" "$d-$kind-s1-1" "$d-$kind-s0-2" "$d-$kind-s1-2" \
                | record_lines "$w" "$rep" "$path" "${kind}_"
        fi
        if [ "$kind" = udp ]; then
            python3 "$STAT" iperf udp "$f" | record_lines "$w" "$rep" "$path" "udp_"
        else
            python3 "$STAT" iperf tcp "$f" | record_lines "$w" "$rep" "$path" "${kind}_"
        fi
    done

    # RTT idle.
    echo_rtt "$dst" "$d-echo-idle.txt" "$ECHO_COUNT" "$ECHO_INTERVAL_US"
    python3 "$STAT" echo "$d-echo-idle.txt" | record_lines "$w" "$rep" "$path" "rtt_idle_"

    # RTT under load: one TCP stream runs for SECS+3 s; probes start after 1 s.
    echo_under_load "$dst" "$d-echo-load.txt" "$d-load.json" "$LOAD_ECHO_COUNT" "$LOAD_ECHO_INTERVAL_US"
    python3 "$STAT" echo "$d-echo-load.txt" | record_lines "$w" "$rep" "$path" "rtt_load_"
    python3 "$STAT" iperf tcp "$d-load.json" | record_lines "$w" "$rep" "$path" "load_tcp_"
}

# ---------------------------------------------------------------- run

run_facts
CMD="perf-scripts/rig.sh"
[ "$QUICK" = 1 ] && CMD="$CMD --quick"
CMD="$CMD --workers \"${WORKERS[*]}\" --reps $REPS --secs $SECS --udp-rate $UDP_RATE"

for w in "${WORKERS[@]}"; do
    start_backend uring "$w"
    start_backend poll "$w"
    for rep in $(seq "$REPS"); do
        # Rotate the order per repetition so no path always runs first (drift, warm caches).
        case $(((rep - 1) % 3)) in
            0) order="raw uring poll" ;;
            1) order="uring poll raw" ;;
            *) order="poll raw uring" ;;
        esac
        for path in $order; do
            case $path in
                raw) dst=198.51.100.2 ;;
                uring) dst=$(sm_dst uring) ;;
                poll) dst=$(sm_dst poll) ;;
            esac
            measure "$w" "$rep" "$path" "$dst"
        done
    done
    stop_backend uring "$w"
    stop_backend poll "$w"
done

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(($(date +%s) - T0))

{
    echo "## ShadowMesh performance rig — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- host: $HOST, nproc $(nproc), CPU: $CPU, kernel $(uname -r)"
    echo "- build: $REV ($BIN)"
    echo "- dataplane flags beyond the defaults: ${DP_EXTRA[*]:-none}"
    echo "- command: \`$CMD\`"
    echo "- load average at start: $LOAD_START; at end: $LOAD_END (1/5/15 min); run took ${ELAPSED} s"
    echo "- each iperf3 run: ${SECS} s (TCP after a 1 s omitted warm-up); UDP: 1300-byte datagrams offered at ${UDP_RATE}bit/s;"
    echo "  RTT: ${ECHO_COUNT} idle probes every ${ECHO_INTERVAL_US} µs, ${LOAD_ECHO_COUNT} probes every ${LOAD_ECHO_INTERVAL_US} µs during one TCP stream"
    echo "- pkts/enter: TUN-side packets (rx+tx, both nodes; a TSO/GRO super-packet counts once) per kernel"
    echo "  entry: io_uring_enter for io_uring, poll/send/recv system calls for poll (the backend's own counter)"
    echo "- paths interleaved per repetition; raw veth pooled over all blocks; n = runs per row"
    echo
    python3 "$STAT" table "$CSV"
    if [ "$ERRORS" -gt 0 ]; then echo "- errors during the run: $ERRORS (see $OUT)"; fi
} >"$OUT/table.md"

cat "$OUT/table.md"
if [ "$QUICK" = 0 ] && [ "$OUT" = "$DEFAULT_OUT" ]; then
    cp "$OUT/table.md" "$RESULTS_ROOT/latest.md"
fi
log "results: $OUT/table.md, $CSV"
