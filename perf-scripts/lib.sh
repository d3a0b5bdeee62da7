# shellcheck shell=bash
# Globals set here are read by the sourcing script.
# shellcheck disable=SC2034
# Shared part of the performance scripts (rig.sh, compare, scaling); sourced, never run.
#
# Owns: logging, package installation, the two namespaces joined by a veth (underlay
# 198.51.100.0/24 only), the trap that removes every namespace, process and file the caller
# made, the ShadowMesh dataplane pair from static keys, and the iperf3 / echo helpers.
# Must never: use an address outside 198.51.100.0/24 (underlay) and 100.64.0.0/10, fd00::/8
# (overlay), leave a namespace or process behind, or loop without a bound.
#
# The caller sets PROG (log prefix) before sourcing, then calls lib_init TAG after parsing
# its options. Globals the helpers read: NSA NSB WORK OUT SECS SM SMD IPERF_PORT ECHO_PORT.

PROG=${PROG:-perf}
IPERF_PORT=${IPERF_PORT:-5201}
ECHO_PORT=${ECHO_PORT:-7777}
ERRORS=0

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

# Succeeds when $1 is an unsigned integer in [$2, $3].
in_range() { [[ "$1" =~ ^[0-9]{1,6}$ ]] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }

# ---------------------------------------------------------------- prerequisites

# Installs the Debian packages named after each missing command: `need_cmds cmd:pkg ...`.
need_cmds() {
    local spec cmd pkg missing=()
    for spec in "$@"; do
        cmd=${spec%%:*}
        pkg=${spec#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    command -v apt-get >/dev/null 2>&1 || die "missing packages: ${missing[*]} (no apt-get here: install them)"
    log "installing ${missing[*]} (apt-get install -y)"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y "${missing[@]}" >&2 \
        || die "apt-get install -y ${missing[*]} failed"
}

# Root check, the base tools, and the ShadowMesh binaries in $BIN (sets SM and SMD).
base_prereqs() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces, TUN devices): run it with sudo"
    need_cmds ip:iproute2 ss:iproute2 iperf3:iperf3 python3:python3 ping:iputils-ping \
        timeout:coreutils
    SM="$BIN/shadowmesh"
    SMD="$BIN/shadowmesh-dataplane"
    if [ ! -x "$SM" ] || [ ! -x "$SMD" ]; then
        die "no binaries in $BIN: run 'cargo build --release --workspace --bins' or pass --bin DIR"
    fi
    # Extra shadowmesh-dataplane flags (split on spaces; printed in the results header).
    # Default --no-pin: both nodes share this machine's cores, and pinning each node's worker i
    # to core i stacks a flow's sender and receiver on one core while another idles (measured
    # on 2 vCPUs, pinned against unpinned: 7-36 % less TCP throughput). On a real deployment, one node per
    # machine, the dataplane's default (pinned) is right. SHADOWMESH_DP_ARGS="" measures pinned.
    read -r -a DP_EXTRA <<<"${SHADOWMESH_DP_ARGS---no-pin}"
    "$SM" bench echo-client --help >/dev/null 2>&1 \
        || die "$SM has no 'bench echo-client': rebuild it (cargo build --release --workspace --bins)"
}

# ---------------------------------------------------------------- state and cleanup

NS_MADE=()
PIDS=()       # background processes we started and have not reaped yet
declare -A DP_PIDS=()

# Sets TAG, NSA, NSB and WORK and installs the trap. The caller may define
# `cleanup_extra` (run first in the trap) for things only it makes.
lib_init() { # tag
    TAG=$1
    NSA="${TAG}a"
    NSB="${TAG}b"
    WORK=$(mktemp -d "/tmp/${TAG}.XXXXXX")
    chmod 700 "$WORK"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

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
    if declare -F cleanup_extra >/dev/null; then cleanup_extra; fi
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
    [ -n "${WORK:-}" ] && rm -rf "$WORK"
    [ "$rc" -ne 0 ] && log "stopped (exit $rc); namespaces and processes removed"
    exit "$rc"
}

# ---------------------------------------------------------------- results directory

# Sets HOST, STAMP, OUT (unless given), RESULTS_ROOT, CSV (with its header line).
results_dir() {
    HOST=$(hostname -s 2>/dev/null || hostname)
    STAMP=$(date +%Y-%m-%d_%H%M%S)
    RESULTS_ROOT="$HERE/results"
    DEFAULT_OUT="$RESULTS_ROOT/${STAMP}-${HOST}"
    [ -n "$OUT" ] || OUT=$DEFAULT_OUT
    mkdir -p "$OUT"
    if [ ! -f "$RESULTS_ROOT/.gitignore" ] && [ -d "$RESULTS_ROOT" ]; then
        printf '%s\n' '# Raw results stay local; only the latest tables are committed.' '*' \
            '!.gitignore' '!latest.md' '!latest-compare.md' '!latest-compare.svg' \
            '!latest-scaling.md' >"$RESULTS_ROOT/.gitignore"
    fi
    CSV="$OUT/runs.csv"
    echo "workers,rep,path,metric,value" >"$CSV"
}

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

# Two namespaces, one veth: A 198.51.100.1 (vA) <-> B 198.51.100.2 (vB); plus an echo
# server on B's underlay address for the raw path.
make_topology() {
    log "namespaces $NSA / $NSB, work dir $WORK, results $OUT"
    ip netns add "$NSA"; NS_MADE+=("$NSA")
    ip netns add "$NSB"; NS_MADE+=("$NSB")
    ip link add vA netns "$NSA" type veth peer name vB netns "$NSB"
    ip -n "$NSA" addr add 198.51.100.1/24 dev vA
    ip -n "$NSB" addr add 198.51.100.2/24 dev vB
    local ns
    for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; done
    ip -n "$NSA" link set vA up
    ip -n "$NSB" link set vB up
    ip netns exec "$NSA" ping -c 1 -W 2 198.51.100.2 >/dev/null || die "the veth does not pass traffic"
    start_echo raw 198.51.100.2
}

# Starts an echo server in B on ADDR, remembered as DP_PIDS[NAME-echo].
start_echo() { # name addr
    ip netns exec "$NSB" "$SM" bench echo-server --listen "$2:$ECHO_PORT" --duration 7200 \
        >"$WORK/echo-$1.log" 2>&1 &
    DP_PIDS[$1-echo]=$!
    PIDS+=("$!")
    sleep 0.3
}

# Pings B's overlay ADDR from A until it answers (bounded: 10 tries).
wait_ping() { # addr
    local _i
    for _i in $(seq 10); do
        ip netns exec "$NSA" ping -c 1 -W 1 "$1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------- ShadowMesh pair

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

# Overlay subnet 100.64.N.0/24 and UDP port of each ShadowMesh backend (callers may change
# them before start_backend so that other VPNs get their own subnets).
SM_NET_uring=${SM_NET_uring:-1}
SM_NET_poll=${SM_NET_poll:-2}
SM_PORT_uring=${SM_PORT_uring:-51820}
SM_PORT_poll=${SM_PORT_poll:-51821}

# The overlay address of B for a ShadowMesh backend.
sm_dst() { # backend
    if [ "$1" = uring ]; then echo "100.64.$SM_NET_uring.2"; else echo "100.64.$SM_NET_poll.2"; fi
}

# Starts the io_uring (TUN smu0) or poll (TUN smp0) dataplane pair from static keys.
start_backend() { # backend workers
    local b=$1 w=$2 net port tun ns idx sock
    if [ "$b" = uring ]; then
        net=$SM_NET_uring; port=$SM_PORT_uring; tun=smu0
    else
        net=$SM_NET_poll; port=$SM_PORT_poll; tun=smp0
    fi
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
            --socket "$sock" "${DP_EXTRA[@]}" >"$WORK/dp-$b-w$w-$idx.log" 2>&1 &
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
    if ! wait_ping "100.64.$net.2"; then
        tail -20 "$WORK/dp-$b-w$w-1.log" "$WORK/dp-$b-w$w-2.log" >&2
        die "no ping through the $b tunnel (100.64.$net.1 -> 100.64.$net.2)"
    fi
    start_echo "$b" "100.64.$net.2"
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

snap() { # backend file-prefix
    local b=$1 p=$2 idx
    for idx in 1 2; do
        timeout 5 "$SM" stats --socket "$WORK/$b-$idx.sock" --raw >"$p-$idx" 2>&1 || true
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

echo_rtt() { # target file count interval
    if ! timeout 120 ip netns exec "$NSA" "$SM" bench echo-client --connect "$1:$ECHO_PORT" \
        --count "$3" --interval-us "$4" >"$2" 2>&1; then
        log "echo-client to $1 failed: $(tail -1 "$2")"
        ERRORS=$((ERRORS + 1))
    fi
}

# RTT probes from A while one TCP stream (SECS+3 s) runs to DST; probes start after 1 s.
# Leaves the stream's iperf3 JSON in LOADFILE.
echo_under_load() { # target echo-file load-json count interval
    local dst=$1 ef=$2 lf=$3
    iperf_server "$dst"
    local spid=$SRV_PID
    timeout $((SECS + 20)) ip netns exec "$NSA" iperf3 -J -p "$IPERF_PORT" -c "$dst" \
        -t $((SECS + 3)) >"$lf" 2>&1 &
    local lpid=$!
    PIDS+=("$lpid")
    sleep 1
    echo_rtt "$dst" "$ef" "$4" "$5"
    wait "$lpid" 2>/dev/null || log "the load stream to $dst ended with an error"
    stop_pid "$lpid"
    stop_pid "$spid"
}

# Common header facts: sets LOAD_START, T0, REV, CPU.
run_facts() {
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    T0=$(date +%s)
    REV=${SHADOWMESH_REV:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")}
    CPU=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
    log "load average at start: $LOAD_START (nproc $(nproc))"
}
