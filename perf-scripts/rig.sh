#!/usr/bin/env bash
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
IPERF_PORT=5201
ECHO_PORT=7777

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

die() { echo "rig: error: $*" >&2; exit 1; }
log() { echo "rig: $*" >&2; }

# Succeeds when $1 is an unsigned integer in [$2, $3].
in_range() { [[ "$1" =~ ^[0-9]{1,6}$ ]] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }

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

# ---------------------------------------------------------------- prerequisites

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, TUN devices): run it with sudo"

need_pkgs=()
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v ss >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v iperf3 >/dev/null 2>&1 || need_pkgs+=(iperf3)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v ping >/dev/null 2>&1 || need_pkgs+=(iputils-ping)
command -v timeout >/dev/null 2>&1 || need_pkgs+=(coreutils)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
    command -v apt-get >/dev/null 2>&1 || die "missing packages: ${need_pkgs[*]} (no apt-get here: install them)"
    log "installing ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y "${need_pkgs[@]}" >&2 \
        || die "apt-get install -y ${need_pkgs[*]} failed"
fi

SM="$BIN/shadowmesh"
SMD="$BIN/shadowmesh-dataplane"
if [ ! -x "$SM" ] || [ ! -x "$SMD" ]; then die "no binaries in $BIN: run 'cargo build --release --workspace --bins' or pass --bin DIR"; fi
"$SM" bench echo-client --help >/dev/null 2>&1 \
    || die "$SM has no 'bench echo-client': rebuild it (cargo build --release --workspace --bins)"

# ---------------------------------------------------------------- state and cleanup

TAG="smrig$$"
NSA="${TAG}a"
NSB="${TAG}b"
WORK=$(mktemp -d "/tmp/${TAG}.XXXXXX")
chmod 700 "$WORK"
NS_MADE=()
PIDS=()       # background processes we started and have not reaped yet

# Stops one process we started (by its id), bounded: TERM, 3 s, then KILL.
stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=(${keep[@]+"${keep[@]}"})
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    local p ns left
    for p in ${PIDS[@]+"${PIDS[@]}"}; do stop_pid "$p"; done
    # Anything still inside our namespaces was started by this script.
    for ns in ${NS_MADE[@]+"${NS_MADE[@]}"}; do
        for _ in 1 2 3; do
            mapfile -t left < <(ip netns pids "$ns" 2>/dev/null)
            [ "${#left[@]}" -eq 0 ] && break
            kill "${left[@]}" 2>/dev/null
            sleep 0.3
        done
        mapfile -t left < <(ip netns pids "$ns" 2>/dev/null)
        [ "${#left[@]}" -gt 0 ] && kill -9 "${left[@]}" 2>/dev/null
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$WORK"
    [ "$rc" -ne 0 ] && log "stopped (exit $rc); namespaces and processes removed"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- results directory

HOST=$(hostname -s 2>/dev/null || hostname)
STAMP=$(date +%Y-%m-%d_%H%M%S)
[ -n "$OUT" ] || OUT="$HERE/results/${STAMP}-${HOST}"
mkdir -p "$OUT"
RESULTS_ROOT="$HERE/results"
if [ ! -f "$RESULTS_ROOT/.gitignore" ] && [ -d "$RESULTS_ROOT" ]; then
    printf '%s\n' '# Raw results stay local; only the latest table is committed.' '*' \
        '!.gitignore' '!latest.md' >"$RESULTS_ROOT/.gitignore"
fi
CSV="$OUT/runs.csv"
echo "workers,rep,path,metric,value" >"$CSV"
ERRORS=0

record() { # workers rep path metric value
    echo "$1,$2,$3,$4,$5" >>"$CSV"
}
# Reads `metric value` lines on stdin and records them with a prefix.
record_lines() { # workers rep path prefix
    local m v
    while read -r m v; do
        record "$1" "$2" "$3" "$4$m" "$v"
    done
}

# ---------------------------------------------------------------- topology

log "namespaces $NSA / $NSB, work dir $WORK, results $OUT"
ip netns add "$NSA"; NS_MADE+=("$NSA")
ip netns add "$NSB"; NS_MADE+=("$NSB")
ip link add vA netns "$NSA" type veth peer name vB netns "$NSB"
ip -n "$NSA" addr add 198.51.100.1/24 dev vA
ip -n "$NSB" addr add 198.51.100.2/24 dev vB
for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; done
ip -n "$NSA" link set vA up
ip -n "$NSB" link set vB up
ip netns exec "$NSA" ping -c 1 -W 2 198.51.100.2 >/dev/null || die "the veth does not pass traffic"

# Echo server on the underlay address (raw path).
ip netns exec "$NSB" "$SM" bench echo-server --listen "198.51.100.2:$ECHO_PORT" --duration 7200 \
    >"$WORK/echo-raw.log" 2>&1 &
PIDS+=("$!")

hexkey() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# Writes one side's static file: self idx, peer idx, subnet n, port, send key, recv key.
static_file() {
    local self=$1 peer=$2 net=$3 port=$4 skey=$5 rkey=$6
    cat <<EOF
[[peer]]
id = $peer
endpoint = "198.51.100.$peer:$port"
allowed_ips = ["100.64.$net.$peer/32", "fd00:$net::$peer/128"]
cipher = "aes-256-gcm"
local_index = $((net * 100 + self))
remote_index = $((net * 100 + peer))
send_key = "$skey"
recv_key = "$rkey"
# A block runs for minutes and static mode has no handshake to rekey: keep the key usable.
rekey_after_secs = 86400
reject_after_secs = 86400
EOF
}

declare -A DP_PIDS=()
# Starts the io_uring (net 1, port 51820) or poll (net 2, port 51821) dataplane pair.
start_backend() { # backend workers
    local b=$1 w=$2 net port tun ns idx sock
    if [ "$b" = uring ]; then net=1; port=51820; tun=smu0; else net=2; port=51821; tun=smp0; fi
    local k1 k2
    k1=$(hexkey); k2=$(hexkey)
    static_file 1 2 "$net" "$port" "$k1" "$k2" >"$WORK/$b-1.toml"
    static_file 2 1 "$net" "$port" "$k2" "$k1" >"$WORK/$b-2.toml"
    for idx in 1 2; do
        if [ "$idx" = 1 ]; then ns=$NSA; else ns=$NSB; fi
        sock="$WORK/$b-$idx.sock"
        rm -f "$sock"
        ip netns exec "$ns" "$SMD" --tun "$tun" --addr "100.64.$net.$idx/24" \
            --addr "fd00:$net::$idx/64" --bind "0.0.0.0:$port" --workers "$w" --backend "$b" \
            --socket "$sock" >"$WORK/dp-$b-w$w-$idx.log" 2>&1 &
        DP_PIDS[$b-$idx]=$!
        PIDS+=("$!")
    done
    for idx in 1 2; do
        sock="$WORK/$b-$idx.sock"
        for _ in $(seq 100); do
            [ -S "$sock" ] && break
            kill -0 "${DP_PIDS[$b-$idx]}" 2>/dev/null || break
            sleep 0.1
        done
        if [ ! -S "$sock" ]; then
            tail -20 "$WORK/dp-$b-w$w-$idx.log" >&2
            die "dataplane $b node $idx did not come up within 10 s"
        fi
        timeout 10 "$SM" static --file "$WORK/$b-$idx.toml" --socket "$sock" >/dev/null \
            || die "loading the static file into $b node $idx failed"
    done
    local ok=0
    for _ in $(seq 10); do
        if ip netns exec "$NSA" ping -c 1 -W 1 "100.64.$net.2" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    if [ "$ok" != 1 ]; then
        tail -20 "$WORK/dp-$b-w$w-1.log" "$WORK/dp-$b-w$w-2.log" >&2
        die "no ping through the $b tunnel (100.64.$net.1 -> 100.64.$net.2)"
    fi
    ip netns exec "$NSB" "$SM" bench echo-server --listen "100.64.$net.2:$ECHO_PORT" \
        --duration 7200 >"$WORK/echo-$b.log" 2>&1 &
    DP_PIDS[$b-echo]=$!
    PIDS+=("$!")
    sleep 0.3
}

stop_backend() { # backend workers
    local b=$1 w=$2 k
    for k in echo 1 2; do
        [ -n "${DP_PIDS[$b-$k]:-}" ] && stop_pid "${DP_PIDS[$b-$k]}"
        unset "DP_PIDS[$b-$k]"
    done
    # Keep the dataplane logs beside the results (they hold no keys).
    cp "$WORK/dp-$b-w$w-1.log" "$WORK/dp-$b-w$w-2.log" "$OUT/" 2>/dev/null || true
}

check_alive() { # backend workers
    local b=$1 w=$2 idx
    for idx in 1 2; do
        if ! kill -0 "${DP_PIDS[$b-$idx]}" 2>/dev/null; then
            tail -20 "$WORK/dp-$b-w$w-$idx.log" >&2
            die "dataplane $b node $idx (workers $w) exited"
        fi
    done
}

# ---------------------------------------------------------------- measurements

# Starts a one-test iperf3 server in B on ADDR (a fresh one per test, so a test that hangs
# cannot leave a busy server behind) and waits until it listens; sets SRV_PID.
SRV_PID=""
iperf_server() { # addr
    ip netns exec "$NSB" iperf3 -s -1 -p "$IPERF_PORT" -B "$1" >>"$WORK/iperf3-server.log" 2>&1 &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    for _ in $(seq 50); do
        ip netns exec "$NSB" ss -Hltn "sport = :$IPERF_PORT" | grep -q LISTEN && return 0
        sleep 0.1
    done
    log "iperf3 server on $1 did not listen within 5 s"
}

# iperf3 client in A to DST, JSON to FILE; one retry (bounded in time by timeout).
iperf() { # file dst args...
    local f=$1 dst=$2 try
    shift 2
    for try in 1 2; do
        iperf_server "$dst"
        if timeout $((SECS + 20)) ip netns exec "$NSA" iperf3 -J -p "$IPERF_PORT" -c "$dst" "$@" \
            >"$f" 2>&1; then
            stop_pid "$SRV_PID"
            return 0
        fi
        stop_pid "$SRV_PID"
        log "iperf3 -c $dst $* failed (try $try): $(grep -o '"error":[^}]*' "$f" | head -1)"
        sleep 1
    done
    ERRORS=$((ERRORS + 1))
    return 1
}

snap() { # backend file-prefix
    local b=$1 p=$2 idx
    for idx in 1 2; do
        timeout 5 "$SM" stats --socket "$WORK/$b-$idx.sock" --raw >"$p-$idx" 2>&1 || true
    done
}

echo_rtt() { # target file count interval
    if ! timeout 120 ip netns exec "$NSA" "$SM" bench echo-client --connect "$1:$ECHO_PORT" \
        --count "$3" --interval-us "$4" >"$2" 2>&1; then
        log "echo-client to $1 failed: $(tail -1 "$2")"
        ERRORS=$((ERRORS + 1))
    fi
}

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
    iperf_server "$dst"
    local spid=$SRV_PID
    timeout $((SECS + 20)) ip netns exec "$NSA" iperf3 -J -p "$IPERF_PORT" -c "$dst" \
        -t $((SECS + 3)) >"$d-load.json" 2>&1 &
    local lpid=$!
    PIDS+=("$lpid")
    sleep 1
    echo_rtt "$dst" "$d-echo-load.txt" "$LOAD_ECHO_COUNT" "$LOAD_ECHO_INTERVAL_US"
    wait "$lpid" 2>/dev/null || log "the load stream for $path ended with an error"
    stop_pid "$lpid"
    stop_pid "$spid"
    python3 "$STAT" echo "$d-echo-load.txt" | record_lines "$w" "$rep" "$path" "rtt_load_"
    python3 "$STAT" iperf tcp "$d-load.json" | record_lines "$w" "$rep" "$path" "load_tcp_"
}

# ---------------------------------------------------------------- run

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$(date +%s)
REV=${SHADOWMESH_REV:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")}
CPU=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
CMD="perf-scripts/rig.sh"
[ "$QUICK" = 1 ] && CMD="$CMD --quick"
CMD="$CMD --workers \"${WORKERS[*]}\" --reps $REPS --secs $SECS --udp-rate $UDP_RATE"
log "load average at start: $LOAD_START (nproc $(nproc))"

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
                uring) dst=100.64.1.2 ;;
                poll) dst=100.64.2.2 ;;
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
if [ "$QUICK" = 0 ] && [ "$OUT" = "$HERE/results/${STAMP}-${HOST}" ]; then
    cp "$OUT/table.md" "$RESULTS_ROOT/latest.md"
fi
log "results: $OUT/table.md, $CSV"
