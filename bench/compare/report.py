#!/usr/bin/env python3
"""Turns the raw runs of bench/compare.sh into the results table and chart.

Input: a CSV of single wrk runs (scenario,server,repeat,rps,p50_ms,p99_ms,errors,non2xx).
Output: PREFIX.md, PREFIX.csv, PREFIX.png (PREFIX is a path such as
bench/results/latest), and the table on standard output. Medians are taken over the repeats of each
(scenario, server); ratios are medians over medians from the same run of the
script (so the peers saw the same machine at the same time).

  report.py RUNS.csv PREFIX "machine description" "command line" [notes...]
"""
import csv
import datetime
import statistics
import sys
from collections import defaultdict

SCENARIOS = [("keepalive", "keep-alive"), ("close", "connection churn (Connection: close)")]


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def load(path):
    runs = defaultdict(list)
    order = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["scenario"], row["server"])
            if row["server"] not in order:
                order.append(row["server"])
            runs[key].append(row)
    return runs, order


def summarise(runs, order):
    """{scenario: [(server, rps, p50, p99, errors, repeats)]} in server order."""
    out = {}
    for scen, _ in SCENARIOS:
        rows = []
        for server in order:
            rs = runs.get((scen, server), [])
            if not rs:
                continue
            rows.append(
                (
                    server,
                    median([float(r["rps"]) for r in rs]),
                    median([float(r["p50_ms"]) for r in rs]),
                    median([float(r["p99_ms"]) for r in rs]),
                    sum(int(r["errors"]) + int(r["non2xx"]) for r in rs),
                    len(rs),
                )
            )
        out[scen] = rows
    return out


def ratio(a, b):
    if not a or not b or b != b or a != a:
        return None
    return a / b


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def bars(summary):
    """The design's bars, evaluated on this run. Returns lines of markdown."""
    lines = []

    def rps(scen, server):
        for row in summary.get(scen, []):
            if row[0] == server:
                return row[1]
        return None

    def best(scen, prefix):
        cands = [(row[1], row[0]) for row in summary.get(scen, []) if row[0].startswith(prefix)]
        return max(cands) if cands else (None, None)

    def verdict(r, bar):
        if r is None:
            return "not measured"
        return f"{r:.2f}x (bar {bar}x): " + ("**met**" if r >= bar else "**missed**")

    nginx_ka = rps("keepalive", "nginx")
    node_ka = rps("keepalive", "node-rr")
    best_ka, best_ka_name = best("keepalive", "uvring-")
    lines.append(f"- keep-alive, best uvring ({best_ka_name or 'none'}) vs nginx: {verdict(ratio(best_ka, nginx_ka), 1.05)}")
    lines.append(f"- keep-alive, best uvring ({best_ka_name or 'none'}) vs node rr: {verdict(ratio(best_ka, node_ka), 1.8)}")
    for backend in ("epoll", "io_uring"):
        rr = rps("keepalive", f"uvring-rr-{backend}")
        if rr is not None:
            lines.append(f"- keep-alive, uvring rr {backend} vs nginx: {verdict(ratio(rr, nginx_ka), 1.05)}; vs node rr: {verdict(ratio(rr, node_ka), 1.8)}")
    node_close = rps("close", "node-rr")
    for backend in ("epoll", "io_uring"):
        rr = rps("close", f"uvring-rr-{backend}")
        rp = rps("close", f"uvring-reuseport-{backend}")
        if rr is None:
            continue
        lines.append(f"- churn, uvring rr {backend} vs node rr: {verdict(ratio(rr, node_close), 2.5)}")
        lines.append(f"- churn, uvring rr {backend} vs uvring reuseport {backend}: {verdict(ratio(rr, rp), 0.9)}")
    return lines


def table(summary):
    lines = []
    for scen, title in SCENARIOS:
        rows = summary.get(scen, [])
        if not rows:
            continue
        nginx = next((r[1] for r in rows if r[0] == "nginx"), None)
        node = next((r[1] for r in rows if r[0] == "node-rr"), None)
        lines.append(f"### {title}")
        lines.append("")
        lines.append("| server | req/s (median) | vs nginx | vs node rr | p50 ms | p99 ms | errors | runs |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for server, rps, p50, p99, errs, n in rows:
            lines.append(
                f"| {server} | {rps:,.0f} | {fmt_ratio(ratio(rps, nginx))} | {fmt_ratio(ratio(rps, node))} "
                f"| {p50:.2f} | {p99:.2f} | {errs} | {n} |"
            )
        lines.append("")
    return lines


def chart(summary, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib missing, no chart", file=sys.stderr)
        return False
    servers = []
    for scen, _ in SCENARIOS:
        for row in summary.get(scen, []):
            if row[0] not in servers:
                servers.append(row[0])
    if not servers:
        return False
    fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(13, 5.5))
    for ax, (scen, label) in zip(axes, SCENARIOS):
        rows = {r[0]: r[1] for r in summary.get(scen, [])}
        vals = [rows.get(s, 0.0) for s in servers]
        colors = [
            "#1f77b4" if s.startswith("uvring") and s.endswith("epoll") else
            "#2ca02c" if s.startswith("uvring") else
            "#d62728" if s == "nginx" else "#9467bd"
            for s in servers
        ]
        bars_ = ax.barh(servers, vals, color=colors)
        ax.invert_yaxis()
        ax.set_title(label)
        ax.set_xlabel("requests/s (median of repeats)")
        for b, v in zip(bars_, vals):
            if v > 0:
                ax.text(v, b.get_y() + b.get_height() / 2, f" {v:,.0f}", va="center", fontsize=8)
        ax.margins(x=0.2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    runs_path, prefix, machine, command = sys.argv[1:5]
    notes = sys.argv[5:]
    runs, order = load(runs_path)
    summary = summarise(runs, order)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    md = [f"# uvring peer comparison ({stamp})", "", f"Machine: {machine}", "", f"Command: `{command}`", ""]
    for n in notes:
        md.append(f"- {n}")
    if notes:
        md.append("")
    md += table(summary)
    md.append("### design bars (this run)")
    md.append("")
    md += bars(summary)
    md.append("")
    text = "\n".join(md)
    with open(f"{prefix}.md", "w") as f:
        f.write(text)
    with open(f"{prefix}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "server", "rps_median", "vs_nginx", "vs_node_rr", "p50_ms", "p99_ms", "errors", "runs"])
        for scen, _ in SCENARIOS:
            rows = summary.get(scen, [])
            nginx = next((r[1] for r in rows if r[0] == "nginx"), None)
            node = next((r[1] for r in rows if r[0] == "node-rr"), None)
            for server, rps, p50, p99, errs, n in rows:
                rn, ro = ratio(rps, nginx), ratio(rps, node)
                w.writerow([scen, server, f"{rps:.0f}", "" if rn is None else f"{rn:.3f}",
                            "" if ro is None else f"{ro:.3f}", f"{p50:.3f}", f"{p99:.3f}", errs, n])
    chart(summary, f"{prefix}.png", f"uvring vs peers, 2 workers each, wrk -t2 -c64, {stamp}; {machine}")
    print(text)


if __name__ == "__main__":
    main()
