#!/usr/bin/env python3
"""Turns the raw runs of bench/compare.sh into the results table and chart.

Input: a CSV of single wrk runs
(scenario,server,repeat,rps,p50_ms,p99_ms,errors,non2xx,requests,server_cpu_s,cpu_us_per_req).
Output: PREFIX.md, PREFIX.csv, PREFIX.png (PREFIX is a path such as
bench/results/latest), and the table on standard output. Medians are taken
over the repeats of each (scenario, server); ratios are medians over medians
from the same run of the script (so the peers saw the same machine at the
same time). The table leads with the server's CPU time per request (cost),
then req/s and latency.

  report.py RUNS.csv PREFIX "machine description" "command line" [notes...]
"""
import csv
import datetime
import statistics
import sys
from collections import defaultdict

SCENARIOS = [
    ("keepalive", "keep-alive"),
    ("close", "connection churn (Connection: close)"),
    ("static4k", "static file, 4 KiB (keep-alive)"),
    ("static1m", "static file, 1 MiB (keep-alive)"),
]


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


class Row:
    """Medians of one (scenario, server) over its repeats."""

    def __init__(self, server, rs):
        self.server = server
        self.rps = median([float(r["rps"]) for r in rs])
        self.p50 = median([float(r["p50_ms"]) for r in rs])
        self.p99 = median([float(r["p99_ms"]) for r in rs])
        cpu = [float(r["cpu_us_per_req"]) for r in rs if r.get("cpu_us_per_req")]
        self.cpu = median(cpu) if cpu else None
        self.cpu_lo = min(cpu) if cpu else None
        self.cpu_hi = max(cpu) if cpu else None
        self.errors = sum(int(r["errors"]) + int(r["non2xx"]) for r in rs)
        self.runs = len(rs)


def summarise(runs, order):
    """{scenario: [Row]} in server order."""
    return {scen: [Row(s, runs[(scen, s)]) for s in order if runs.get((scen, s))] for scen, _ in SCENARIOS}


def ratio(a, b):
    if a is None or b is None or not b or b != b or a != a:
        return None
    return a / b


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def find(summary, scen, server):
    return next((r for r in summary.get(scen, []) if r.server == server), None)


def bars(summary):
    """The design's bars (DESIGN.md, "Bars"), evaluated on this run."""
    lines = []

    def verdict(r, bar, le):
        if r is None:
            return "not measured"
        ok = r <= bar if le else r >= bar
        return f"{r:.2f}x (bar {'<=' if le else '>='} {bar}x): " + ("**met**" if ok else "**missed**")

    def cpu(scen, server):
        r = find(summary, scen, server)
        return r.cpu if r else None

    def rps(scen, server):
        r = find(summary, scen, server)
        return r.rps if r else None

    nginx_ka = cpu("keepalive", "nginx")
    for policy in ("rr", "shared", "reuseport"):
        c = cpu("keepalive", f"uvring-{policy}-io_uring")
        if c is not None:
            lines.append(f"- keep-alive CPU/req, uvring {policy} io_uring / nginx: {verdict(ratio(c, nginx_ka), 0.85, True)}")
    ka = [(r.cpu, r.server) for r in summary.get("keepalive", []) if r.server.startswith("uvring-") and r.cpu is not None]
    if ka:
        best, name = min(ka)
        lines.append(f"- keep-alive CPU/req, best uvring ({name}) / nginx: {verdict(ratio(best, nginx_ka), 0.72, True)}")
        lines.append(f"- keep-alive CPU/req, best uvring ({name}) / hyper: "
                     f"{verdict(ratio(best, cpu('keepalive', 'hyper')), 0.9, True)}")
    for backend in ("epoll", "io_uring"):
        name = f"uvring-rr-{backend}"
        if find(summary, "close", name) is None:
            continue
        lines.append(f"- churn CPU/req, uvring rr {backend} / nginx: "
                     f"{verdict(ratio(cpu('close', name), cpu('close', 'nginx')), 1.0, True)}")
        lines.append(f"- churn req/s, uvring rr {backend} / node rr: "
                     f"{verdict(ratio(rps('close', name), rps('close', 'node-rr')), 3.0, False)}")
    return lines


def table(summary):
    lines = []
    for scen, title in SCENARIOS:
        rows = summary.get(scen, [])
        if not rows:
            continue
        nginx = find(summary, scen, "nginx")
        node = find(summary, scen, "node-rr")
        lines.append(f"### {title}")
        lines.append("")
        lines.append("| server | CPU us/req (median; min..max) | CPU vs nginx | req/s (median) | req/s vs nginx "
                     "| req/s vs node rr | p50 ms | p99 ms | errors | runs |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            cpu = "-" if r.cpu is None else f"**{r.cpu:.2f}** ({r.cpu_lo:.2f}..{r.cpu_hi:.2f})"
            lines.append(
                f"| {r.server} | {cpu} | {fmt_ratio(ratio(r.cpu, nginx and nginx.cpu))} | {r.rps:,.0f} "
                f"| {fmt_ratio(ratio(r.rps, nginx and nginx.rps))} | {fmt_ratio(ratio(r.rps, node and node.rps))} "
                f"| {r.p50:.2f} | {r.p99:.2f} | {r.errors} | {r.runs} |"
            )
        lines.append("")
    return lines


def color(s):
    if s.startswith("uvring"):
        return "#1f77b4" if s.endswith("epoll") else "#2ca02c"
    return {"nginx": "#d62728", "hyper": "#ff7f0e"}.get(s, "#9467bd")


def chart(summary, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib missing, no chart", file=sys.stderr)
        return False
    scenarios = [(scen, label) for scen, label in SCENARIOS if summary.get(scen)]
    servers = []
    for scen, _ in scenarios:
        for r in summary.get(scen, []):
            if r.server not in servers:
                servers.append(r.server)
    if not servers:
        return False
    fig, axes = plt.subplots(2, len(scenarios), figsize=(6.5 * len(scenarios), 10), squeeze=False)
    panels = [("cpu", "server CPU us per request (median; lower is better)", "{:.2f}"),
              ("rps", "requests/s (median)", "{:,.0f}")]
    for row_axes, (attr, xlabel, fmt) in zip(axes, panels):
        for ax, (scen, label) in zip(row_axes, scenarios):
            rows = {r.server: getattr(r, attr) for r in summary.get(scen, [])}
            vals = [rows.get(s) or 0.0 for s in servers]
            bars_ = ax.barh(servers, vals, color=[color(s) for s in servers])
            ax.invert_yaxis()
            ax.set_title(label)
            ax.set_xlabel(xlabel)
            for b, v in zip(bars_, vals):
                if v > 0:
                    ax.text(v, b.get_y() + b.get_height() / 2, " " + fmt.format(v), va="center", fontsize=8)
            ax.margins(x=0.2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
        w.writerow(["scenario", "server", "cpu_us_per_req_median", "cpu_vs_nginx", "rps_median", "vs_nginx",
                    "vs_node_rr", "p50_ms", "p99_ms", "errors", "runs"])
        for scen, _ in SCENARIOS:
            nginx = find(summary, scen, "nginx")
            node = find(summary, scen, "node-rr")
            for r in summary.get(scen, []):
                rc = ratio(r.cpu, nginx and nginx.cpu)
                rn, ro = ratio(r.rps, nginx and nginx.rps), ratio(r.rps, node and node.rps)
                w.writerow([scen, r.server, "" if r.cpu is None else f"{r.cpu:.3f}", "" if rc is None else f"{rc:.3f}",
                            f"{r.rps:.0f}", "" if rn is None else f"{rn:.3f}", "" if ro is None else f"{ro:.3f}",
                            f"{r.p50:.3f}", f"{r.p99:.3f}", r.errors, r.runs])
    chart(summary, f"{prefix}.png", f"uvring vs peers, 2 workers each, wrk -t2 (external load generator), {stamp}; {machine}")
    print(text)


if __name__ == "__main__":
    main()
