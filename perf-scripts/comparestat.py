#!/usr/bin/env python3
"""Table and SVG chart of perf-scripts/compare (stdlib only; called through rigstat.py).

Input: the run's CSV (`workers,rep,path,metric,value`) and, beside it, `status.txt` with one
`path reason...` line per path that could not be measured. Medians over repetitions; a value
that was not measured is shown as "–", never invented.
"""

import csv
import html
import math
import os
import statistics

NAN = float("nan")

PATHS = ["raw", "uring", "poll", "wgo", "btun"]
NAMES = {
    "raw": "raw veth",
    "uring": "ShadowMesh io_uring",
    "poll": "ShadowMesh poll",
    "wgo": "wireguard-go",
    "btun": "boringtun",
}
COLOURS = {
    "raw": "#9e9e9e",
    "uring": "#1565c0",
    "poll": "#64b5f6",
    "wgo": "#c62828",
    "btun": "#ef6c00",
}
SHORT = {"raw": "raw veth", "uring": "SM uring", "poll": "SM poll", "wgo": "wg-go", "btun": "boringtun"}
PEERS = [("wgo", "wireguard-go"), ("btun", "boringtun")]

# Targets of issue 5: TCP single stream >= 5x each peer; RTT p99 under load no worse.
TARGET_TCP1_RATIO = 5.0

# (metric, label, digits, higher is better)
RATIO_METRICS = [
    ("tcp1_gbps", "TCP×1 Gbit/s", 2, True),
    ("tcp4_gbps", "TCP×4 Gbit/s", 2, True),
    ("udp_rx_gbps", "UDP 1300 B received Gbit/s", 2, True),
    ("udp_loss_pct", "UDP loss %", 1, False),
    ("rtt_idle_p50_us", "RTT idle p50 µs", 0, False),
    ("rtt_idle_p99_us", "RTT idle p99 µs", 0, False),
    ("rtt_idle_p999_us", "RTT idle p99.9 µs", 0, False),
    ("rtt_load_p50_us", "RTT under load p50 µs", 0, False),
    ("rtt_load_p99_us", "RTT under load p99 µs", 0, False),
    ("rtt_load_p999_us", "RTT under load p99.9 µs", 0, False),
    ("tcp1_cpu_s_per_gb", "CPU s/GB TCP×1", 2, False),
    ("tcp4_cpu_s_per_gb", "CPU s/GB TCP×4", 2, False),
]

# Panels of the chart: (metric, title, unit).
PANELS = [
    ("tcp1_gbps", "TCP, 1 stream", "Gbit/s (higher is better)"),
    ("tcp4_gbps", "TCP, 4 streams", "Gbit/s (higher is better)"),
    ("udp_rx_gbps", "UDP 1300 B, received", "Gbit/s (higher is better)"),
    ("rtt_idle_p99_us", "RTT p99, idle", "µs (lower is better)"),
    ("rtt_load_p99_us", "RTT p99, under TCP load", "µs (lower is better)"),
    ("tcp1_cpu_s_per_gb", "CPU per GB, TCP 1 stream", "CPU s/GB (lower is better)"),
]


def _median(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else NAN


def _fmt(x, digits=2):
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def load(path):
    """-> (runs: path -> metric -> [values], status: path -> reason)."""
    runs = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            try:
                v = float(row["value"])
            except ValueError:
                v = NAN
            runs.setdefault(row["path"], {}).setdefault(row["metric"], []).append(v)
    status = {}
    try:
        with open(os.path.join(os.path.dirname(path), "status.txt"), encoding="utf-8") as f:
            for line in f:
                p, _, reason = line.strip().partition(" ")
                if p:
                    status[p] = reason
    except OSError:
        pass
    return runs, status


def table(path):
    """Prints the Markdown table, the ratios to each peer and the issue's targets."""
    runs, status = load(path)

    def med(p, m):
        return _median(runs.get(p, {}).get(m, []))

    def spread(p, m):
        xs = [x for x in runs.get(p, {}).get(m, []) if not math.isnan(x)]
        if not xs:
            return "–"
        return f"{statistics.median(xs):.2f} [{min(xs):.2f}–{max(xs):.2f}]"

    def rtt(p, kind):
        return "/".join(
            _fmt(med(p, f"rtt_{kind}_{q}_us"), 0) for q in ("p50", "p99", "p999")
        )

    print(
        "| path | n | TCP×1 Gbit/s med [min–max] | TCP×4 Gbit/s med [min–max] "
        "| UDP 1300 B rx Gbit/s | UDP loss % | RTT idle p50/p99/p99.9 µs "
        "| RTT under TCP load p50/p99/p99.9 µs | CPU s/GB TCP×1 | CPU s/GB TCP×4 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in PATHS:
        if p in status and not runs.get(p, {}).get("tcp1_gbps"):
            print(f"| {NAMES[p]} | 0 | not measured: {status[p]} | | | | | | | |")
            continue
        if p not in runs:
            continue
        n = len(runs[p].get("tcp1_gbps", []))
        cpu1 = "–" if p == "raw" else _fmt(med(p, "tcp1_cpu_s_per_gb"))
        cpu4 = "–" if p == "raw" else _fmt(med(p, "tcp4_cpu_s_per_gb"))
        print(
            f"| {NAMES[p]} | {n} | {spread(p, 'tcp1_gbps')} | {spread(p, 'tcp4_gbps')} "
            f"| {_fmt(med(p, 'udp_rx_gbps'))} | {_fmt(med(p, 'udp_loss_pct'), 1)} "
            f"| {rtt(p, 'idle')} | {rtt(p, 'load')} | {cpu1} | {cpu4} |"
        )
    for p, reason in status.items():
        if runs.get(p, {}).get("tcp1_gbps"):
            print(f"\n- note on {NAMES.get(p, p)}: {reason}")

    print()
    print("Ratios of medians, ShadowMesh io_uring ÷ peer (throughput: higher is better for")
    print("ShadowMesh; RTT, loss and CPU per GB: lower is better for ShadowMesh):")
    print()
    print("| metric | io_uring | " + " | ".join(f"{n} | io_uring ÷ {n}" for _, n in PEERS) + " |")
    print("|---|---|" + "---|---|" * len(PEERS))
    for m, label, digits, _ in RATIO_METRICS:
        u = med("uring", m)
        cells = [label, _fmt(u, digits)]
        for peer, _ in PEERS:
            v = med(peer, m)
            cells += [_fmt(v, digits), _fmt(u / v if v > 0 else NAN) + "×"]
        print("| " + " | ".join(cells) + " |")

    print()
    print("Targets (issue 5, medians):")
    for peer, name in PEERS:
        u, v = med("uring", "tcp1_gbps"), med(peer, "tcp1_gbps")
        if math.isnan(u) or math.isnan(v) or v <= 0:
            print(f"- TCP×1 ≥ {TARGET_TCP1_RATIO:.0f}× {name}: not measured")
        else:
            r = u / v
            verdict = "met" if r >= TARGET_TCP1_RATIO else "MISSED"
            print(
                f"- TCP×1 ≥ {TARGET_TCP1_RATIO:.0f}× {name}: {r:.2f}× "
                f"({u:.2f} vs {v:.2f} Gbit/s): {verdict} "
                f"({100 * (r / TARGET_TCP1_RATIO - 1):+.0f} % against the target)"
            )
        u, v = med("uring", "rtt_load_p99_us"), med(peer, "rtt_load_p99_us")
        if math.isnan(u) or math.isnan(v) or v <= 0:
            print(f"- RTT p99 under load ≤ {name}: not measured")
        else:
            verdict = "met" if u <= v else "MISSED"
            print(
                f"- RTT p99 under load ≤ {name}: {u:.0f} vs {v:.0f} µs "
                f"({u / v:.2f}×): {verdict}"
            )


def _nice_max(v):
    """A round axis maximum at or above v."""
    if not v > 0 or math.isnan(v):
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def _num(v):
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def svg(path, out):
    """Writes a grid of bar-chart panels (one per metric, one bar per path, shared legend)."""
    runs, status = load(path)
    paths = [p for p in PATHS if runs.get(p, {}).get("tcp1_gbps") or p in status]
    cols, pw, ph = 3, 330, 250
    left, top_pad, bottom = 62, 40, 48
    rows = (len(PANELS) + cols - 1) // cols
    legend_h = 30
    width = cols * pw + 20
    height = 60 + rows * ph + legend_h
    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
        "ShadowMesh vs WireGuard implementations (medians; veth between two namespaces)"
        "</text>",
    ]
    # Legend.
    lx = 20
    for p in paths:
        label = NAMES[p] + (" (not measured)" if p in status and not runs.get(p) else "")
        parts.append(f'<rect x="{lx}" y="36" width="12" height="12" fill="{COLOURS[p]}"/>')
        parts.append(f'<text x="{lx + 16}" y="46">{e(label)}</text>')
        lx += 26 + 6.5 * len(label)
    for i, (metric, title, unit) in enumerate(PANELS):
        ox = 10 + (i % cols) * pw
        oy = 60 + legend_h + (i // cols) * ph - 30
        plot_w = pw - left - 15
        plot_h = ph - top_pad - bottom
        px, py = ox + left, oy + top_pad
        vals = [(p, _median(runs.get(p, {}).get(metric, []))) for p in paths]
        if metric.endswith("cpu_s_per_gb"):
            vals = [(p, v) for p, v in vals if p != "raw"]
        vmax = _nice_max(max((v for _, v in vals if not math.isnan(v)), default=NAN))
        parts.append(
            f'<text x="{ox + pw / 2}" y="{oy + 18}" text-anchor="middle" font-size="13" '
            f'font-weight="bold">{e(title)}</text>'
        )
        # Y axis with 5 ticks and grid lines.
        for t in range(6):
            v = vmax * t / 5
            y = py + plot_h - plot_h * t / 5
            parts.append(
                f'<line x1="{px}" y1="{y:.1f}" x2="{px + plot_w}" y2="{y:.1f}" '
                'stroke="#e0e0e0"/>'
            )
            parts.append(
                f'<text x="{px - 4}" y="{y + 4:.1f}" text-anchor="end">{_num(v)}</text>'
            )
        parts.append(
            f'<line x1="{px}" y1="{py}" x2="{px}" y2="{py + plot_h}" stroke="black"/>'
        )
        parts.append(
            f'<line x1="{px}" y1="{py + plot_h}" x2="{px + plot_w}" y2="{py + plot_h}" '
            'stroke="black"/>'
        )
        cy = py + plot_h / 2
        parts.append(
            f'<text x="{ox + 12}" y="{cy}" text-anchor="middle" '
            f'transform="rotate(-90 {ox + 12} {cy})">{e(unit)}</text>'
        )
        n = max(len(vals), 1)
        slot = plot_w / n
        bw = slot * 0.7
        for j, (p, v) in enumerate(vals):
            bx = px + j * slot + (slot - bw) / 2
            if math.isnan(v):
                parts.append(
                    f'<text x="{bx + bw / 2:.1f}" y="{py + plot_h - 4}" text-anchor="middle" '
                    'fill="#757575">n/a</text>'
                )
            else:
                h = plot_h * v / vmax
                parts.append(
                    f'<rect x="{bx:.1f}" y="{py + plot_h - h:.1f}" width="{bw:.1f}" '
                    f'height="{h:.1f}" fill="{COLOURS[p]}"><title>{e(NAMES[p])}: '
                    f"{_num(v)}</title></rect>"
                )
                parts.append(
                    f'<text x="{bx + bw / 2:.1f}" y="{py + plot_h - h - 3:.1f}" '
                    f'text-anchor="middle">{_num(v)}</text>'
                )
            parts.append(
                f'<text x="{bx + bw / 2:.1f}" y="{py + plot_h + 14}" text-anchor="middle" '
                f'font-size="9">{e(SHORT[p])}</text>'
            )
        parts.append(
            f'<text x="{px + plot_w / 2}" y="{py + plot_h + 32}" text-anchor="middle" '
            'fill="#424242">path (SM = ShadowMesh)</text>'
        )
    parts.append("</svg>")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")


def scaling_table(path):
    """perf-scripts/scaling's CSV -> one row per worker count, one column per flow count."""
    runs = {}  # (workers, path, flows) -> [Gbit/s]
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            m = row["metric"]
            if not (m.startswith("P") and m.endswith("_gbps")):
                continue
            try:
                v = float(row["value"])
            except ValueError:
                v = NAN
            flows = int(m[1:].partition("_")[0])
            runs.setdefault((row["workers"], row["path"], flows), []).append(v)
    workers = sorted({w for w, _, _ in runs}, key=int)
    flows = sorted({fl for _, _, fl in runs})

    def cell(key):
        xs = [x for x in runs.get(key, []) if not math.isnan(x)]
        if not xs:
            return "–"
        return f"{statistics.median(xs):.2f} [{min(xs):.2f}–{max(xs):.2f}]"

    print("| path | workers | " + " | ".join(f"TCP×{fl} Gbit/s" for fl in flows) + " |")
    print("|---|---|" + "---|" * len(flows))
    for w in workers:
        print(
            f"| ShadowMesh io_uring | {w} | "
            + " | ".join(cell((w, "uring", fl)) for fl in flows)
            + " |"
        )
    for w in workers:
        print(
            f"| raw veth (during the workers={w} block) | – | "
            + " | ".join(cell((w, "raw", fl)) for fl in flows)
            + " |"
        )
    if len(workers) >= 2:
        lo, hi = workers[0], workers[-1]
        print()
        for fl in flows:
            a = _median(runs.get((lo, "uring", fl), []))
            b = _median(runs.get((hi, "uring", fl), []))
            r = b / a if a > 0 else NAN
            print(f"- TCP×{fl}: workers={hi} ÷ workers={lo} = {_fmt(r)}×")
