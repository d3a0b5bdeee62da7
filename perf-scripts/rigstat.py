#!/usr/bin/env python3
"""Helper of perf-scripts/rig.sh (stdlib only): parses tool output and builds the table.

Subcommands (all print `metric value` lines, one per line, unless noted):
  iperf tcp|udp FILE        iperf3 -J client output -> gbps/retr/gb or rx_gbps/loss_pct/gb
                            (gb: gigabytes the client sent, warm-up included)
  echo FILE                 `shadowmesh bench echo-client` output -> p50_us/p99_us/p999_us/lost
  cpu PID...                utime+stime of the processes, in seconds (`cpu_s`)
  cpu_per_gb C0 C1 GB       (C1 - C0) / GB -> `cpu_s_per_gb`
  compare CSV               perf-scripts/compare's CSV -> Markdown table + ratios (stdout)
  svg CSV FILE              the same medians as a grouped bar chart (hand-written SVG)
  scaling CSV               perf-scripts/scaling's CSV -> Markdown table (stdout)
  enters A0 A1 B0 B1        `shadowmesh stats --raw` before/after on both nodes ->
                            pkts_per_enter (both nodes), per node, drops
  table CSV                 raw-run CSV -> Markdown table of medians + targets (stdout)

A value that cannot be measured is printed as `nan`, never invented.
"""

import csv
import json
import math
import os
import statistics
import sys

NAN = float("nan")

# Targets of issue 3.
TARGET_URING_OVER_POLL = 1.5
TARGET_URING_OVER_RAW = 0.25
TARGET_PKTS_PER_ENTER = 32.0


def emit(name, value):
    """Prints one `metric value` line."""
    if isinstance(value, float):
        print(f"{name} {'nan' if math.isnan(value) else f'{value:.6g}'}")
    else:
        print(f"{name} {value}")


def load_json(path):
    """Reads an iperf3 JSON file; iperf3 may print an error object, or nothing at all."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def cmd_iperf(mode, path):
    """Throughput from iperf3 -J: receiver-side rate (what actually arrived)."""
    end = load_json(path).get("end", {})
    if mode == "tcp":
        recv = end.get("sum_received", {})
        sent = end.get("sum_sent", {})
        emit("gbps", recv.get("bits_per_second", NAN) / 1e9)
        emit("retr", sent.get("retransmits", NAN))
        emit("gb", sent_gb(load_json(path)))
    else:
        # iperf3 >= 3.?: sum_received holds the server's view; older: only `sum`.
        recv = end.get("sum_received") or end.get("sum", {})
        bps = recv.get("bits_per_second", NAN)
        loss = recv.get("lost_percent", NAN)
        if "sum_received" not in end and not math.isnan(loss):
            bps = bps * (1.0 - loss / 100.0)
        emit("rx_gbps", bps / 1e9)
        emit("loss_pct", loss)
        emit("gb", sent_gb(load_json(path)))


def sent_gb(doc):
    """Gigabytes the client sent over all intervals, omitted warm-up ones included (the CPU
    time measured around the run includes them too)."""
    total = 0
    seen = False
    for iv in doc.get("intervals", []):
        b = iv.get("sum", {}).get("bytes")
        if isinstance(b, (int, float)):
            total += b
            seen = True
    return total / 1e9 if seen else NAN


def cmd_cpu(pids):
    """Sum of utime + stime (fields 14 and 15 of /proc/PID/stat; all threads) in seconds.
    The command name (field 2) may hold spaces: fields are counted after its closing `)`."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                rest = f.read().rpartition(")")[2].split()
            total += int(rest[11]) + int(rest[12])
        except (OSError, ValueError, IndexError):
            emit("cpu_s", NAN)
            return
    emit("cpu_s", total / hz)


def cmd_cpu_per_gb(c0, c1, gb):
    try:
        d, g = float(c1) - float(c0), float(gb)
    except ValueError:
        emit("cpu_s_per_gb", NAN)
        return
    emit("cpu_s_per_gb", d / g if g > 0 and d >= 0 else NAN)


def cmd_echo(path):
    """Parses `count=.. lost=.. p50_us=.. p99_us=.. p999_us=.. max_us=..`."""
    fields = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                for tok in line.split():
                    if "=" in tok:
                        k, _, v = tok.partition("=")
                        fields[k] = v
    except OSError:
        pass

    def num(key):
        try:
            return float(fields[key])
        except (KeyError, ValueError):
            return NAN

    emit("p50_us", num("p50_us"))
    emit("p99_us", num("p99_us"))
    emit("p999_us", num("p999_us"))
    emit("lost", num("lost"))


def stats_totals(path):
    """Sums the `worker=i ...` lines of `shadowmesh stats --raw`."""
    tot = {"pkts": 0, "enters": 0, "drops": 0}
    seen = False
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                kv = dict(t.partition("=")[::2] for t in line.split() if "=" in t)
                if "worker" not in kv or "rx_packets" not in kv:
                    continue
                seen = True
                tot["pkts"] += int(kv.get("rx_packets", 0)) + int(kv.get("tx_packets", 0))
                tot["enters"] += int(kv.get("enters", 0))
                tot["drops"] += int(kv.get("drops", 0))
    except (OSError, ValueError):
        return None
    return tot if seen else None


def cmd_enters(a0, a1, b0, b1):
    """Packets (TUN side, rx+tx) per io_uring_enter between two snapshots, per node and both."""
    snaps = [stats_totals(p) for p in (a0, a1, b0, b1)]
    if any(s is None for s in snaps):
        for name in ("pkts_per_enter", "pkts_per_enter_a", "pkts_per_enter_b", "drops"):
            emit(name, NAN)
        return
    sa0, sa1, sb0, sb1 = snaps
    d = {}
    for node, (s0, s1) in (("a", (sa0, sa1)), ("b", (sb0, sb1))):
        d[node] = {k: s1[k] - s0[k] for k in s0}

    def ratio(p, e):
        return p / e if e > 0 else NAN

    emit(
        "pkts_per_enter",
        ratio(d["a"]["pkts"] + d["b"]["pkts"], d["a"]["enters"] + d["b"]["enters"]),
    )
    emit("pkts_per_enter_a", ratio(d["a"]["pkts"], d["a"]["enters"]))
    emit("pkts_per_enter_b", ratio(d["b"]["pkts"], d["b"]["enters"]))
    emit("drops", float(d["a"]["drops"] + d["b"]["drops"]))


# ---------------------------------------------------------------- table


def median(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else NAN


def fmt(x, digits=2):
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def cmd_table(path):
    """Medians per (path, workers) over repetitions; raw veth pooled over all blocks."""
    runs = {}  # (path, workers) -> metric -> [values]
    nan_count = 0
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            try:
                v = float(row["value"])
            except ValueError:
                v = NAN
            key = ("raw", "–") if row["path"] == "raw" else (row["path"], row["workers"])
            runs.setdefault(key, {}).setdefault(row["metric"], []).append(v)
            if math.isnan(v) and not row["metric"].startswith("pkts_per_enter"):
                nan_count += 1

    def med(key, metric):
        return median(runs.get(key, {}).get(metric, []))

    def spread(key, metric):
        xs = [x for x in runs.get(key, {}).get(metric, []) if not math.isnan(x)]
        if not xs:
            return "–"
        return f"{statistics.median(xs):.2f} [{min(xs):.2f}–{max(xs):.2f}]"

    def n_of(key):
        return len(runs.get(key, {}).get("tcp1_gbps", []))

    workers = sorted({w for (p, w) in runs if p != "raw"}, key=int)
    order = [("raw", "–")] + [(p, w) for w in workers for p in ("uring", "poll")]
    names = {"raw": "raw veth", "uring": "ShadowMesh io_uring", "poll": "ShadowMesh poll"}

    print(
        "| path | workers | n | TCP×1 Gbit/s med [min–max] | TCP×4 Gbit/s med [min–max] "
        "| UDP 1300 B rx Gbit/s | UDP loss % | RTT idle p50/p99 µs "
        "| RTT under TCP load p50/p99 µs | pkts/enter TCP×1 | pkts/enter UDP |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in order:
        if key not in runs:
            continue
        p, w = key
        # Raw veth has no dataplane; poll's counter is its syscalls, shown for comparison.
        ppe_tcp = fmt(med(key, "tcp1_pkts_per_enter"), 1) if p != "raw" else "–"
        ppe_udp = fmt(med(key, "udp_pkts_per_enter"), 1) if p != "raw" else "–"
        print(
            f"| {names[p]} | {w} | {n_of(key)} | {spread(key, 'tcp1_gbps')} "
            f"| {spread(key, 'tcp4_gbps')} | {fmt(med(key, 'udp_rx_gbps'))} "
            f"| {fmt(med(key, 'udp_loss_pct'), 1)} "
            f"| {fmt(med(key, 'rtt_idle_p50_us'), 0)}/{fmt(med(key, 'rtt_idle_p99_us'), 0)} "
            f"| {fmt(med(key, 'rtt_load_p50_us'), 0)}/{fmt(med(key, 'rtt_load_p99_us'), 0)} "
            f"| {ppe_tcp} | {ppe_udp} |"
        )

    print()
    print("Targets (medians):")
    raw1 = med(("raw", "–"), "tcp1_gbps")
    raw4 = med(("raw", "–"), "tcp4_gbps")

    def verdict(ok):
        return "–" if ok is None else ("met" if ok else "MISSED")

    for w in workers:
        u, pl = ("uring", w), ("poll", w)
        for label, metric, raw in (("TCP×1", "tcp1_gbps", raw1), ("TCP×4", "tcp4_gbps", raw4)):
            um, pm = med(u, metric), med(pl, metric)
            r_poll = um / pm if pm > 0 else NAN
            r_raw = um / raw if raw > 0 else NAN
            print(
                f"- workers={w} {label}: io_uring/poll = {fmt(r_poll)}× "
                f"(target ≥ {TARGET_URING_OVER_POLL}×: "
                f"{verdict(None if math.isnan(r_poll) else r_poll >= TARGET_URING_OVER_POLL)}); "
                f"io_uring/raw veth = {fmt(100 * r_raw, 1)} % "
                f"(target ≥ {100 * TARGET_URING_OVER_RAW:.0f} %: "
                f"{verdict(None if math.isnan(r_raw) else r_raw >= TARGET_URING_OVER_RAW)})"
            )
        ppe = med(u, "tcp1_pkts_per_enter")
        print(
            f"- workers={w} io_uring packets per io_uring_enter during TCP×1 = {fmt(ppe, 1)} "
            f"(target ≥ {TARGET_PKTS_PER_ENTER:.0f}: "
            f"{verdict(None if math.isnan(ppe) else ppe >= TARGET_PKTS_PER_ENTER)})"
        )
    if nan_count:
        print(f"- {nan_count} measurement(s) failed (nan in the CSV); see the logs beside it")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "iperf" and len(args) == 2 and args[0] in ("tcp", "udp"):
        cmd_iperf(*args)
    elif cmd == "echo" and len(args) == 1:
        cmd_echo(*args)
    elif cmd == "enters" and len(args) == 4:
        cmd_enters(*args)
    elif cmd == "table" and len(args) == 1:
        cmd_table(*args)
    elif cmd == "cpu" and args:
        cmd_cpu(args)
    elif cmd == "cpu_per_gb" and len(args) == 3:
        cmd_cpu_per_gb(*args)
    elif cmd == "compare" and len(args) == 1:
        import comparestat  # pylint: disable=import-outside-toplevel

        comparestat.table(args[0])
    elif cmd == "scaling" and len(args) == 1:
        import comparestat  # pylint: disable=import-outside-toplevel

        comparestat.scaling_table(args[0])
    elif cmd == "svg" and len(args) == 2:
        import comparestat  # pylint: disable=import-outside-toplevel

        comparestat.svg(args[0], args[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
