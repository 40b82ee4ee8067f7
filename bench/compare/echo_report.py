#!/usr/bin/env python3
"""Turns the raw runs of bench/echo_external.sh into its table.

Input: a CSV of single client runs
(shape,server,repeat,secs,round_trips,rate,server_cpu_s,server_cpu_us_per_rt,client_cpu_share,client_backend).
Output: PREFIX.md and PREFIX.csv (medians, spreads and ratios), and the
table on standard output. Medians are taken over the repeats of each
(shape, server); ratios are medians over medians of the same run.

  echo_report.py RUNS.csv PREFIX "machine description" "command line" [notes...]
"""
import csv
import datetime
import statistics
import sys
from collections import defaultdict

MODE = "external client (its own process, pinned to the other core)"


def load(path):
    runs = defaultdict(list)
    shapes, servers = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["shape"] not in shapes:
                shapes.append(row["shape"])
            if row["server"] not in servers:
                servers.append(row["server"])
            runs[(row["shape"], row["server"])].append(row)
    return runs, shapes, servers


def stats(rows, key):
    xs = sorted(float(r[key]) for r in rows if r[key] != "")
    if not xs:
        return None, None, None
    return statistics.median(xs), xs[0], xs[-1]


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def main():
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    runs_path, prefix, machine, command = sys.argv[1:5]
    notes = sys.argv[5:]
    runs, shapes, servers = load(runs_path)
    summary = {}
    for shape in shapes:
        for server in servers:
            rows = runs.get((shape, server))
            if rows:
                summary[(shape, server)] = (
                    stats(rows, "server_cpu_us_per_rt"),
                    stats(rows, "rate"),
                    stats(rows, "client_cpu_share")[0],
                    len(rows),
                )

    def cpu(shape, server):
        s = summary.get((shape, server))
        return s[0][0] if s else None

    def rate(shape, server):
        s = summary.get((shape, server))
        return s[1][0] if s else None

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    md = [f"# uvring echo, {MODE} ({stamp})", "", f"Machine: {machine}", "", f"Command: `{command}`", ""]
    md += [f"- {n}" for n in notes]
    md.append("")
    for shape in shapes:
        md += [f"### {shape}", ""]
        md.append("| server | server CPU us per round trip (min..max) | vs uvring-epoll | round trips/s (min..max) | vs uvring-epoll | client CPU | runs |")
        md.append("|---|---:|---:|---:|---:|---:|---:|")
        for server in servers:
            s = summary.get((shape, server))
            if not s:
                continue
            (c, cl, ch), (r, rl, rh), share, n = s
            cpu_txt = "-" if c is None else f"{c:.2f} ({cl:.2f}..{ch:.2f})"
            rate_txt = "-" if r is None else f"{r:,.0f} ({rl:,.0f}..{rh:,.0f})"
            md.append(
                f"| {server} | {cpu_txt} | {fmt_ratio(ratio(c, cpu(shape, 'uvring-epoll')))} "
                f"| {rate_txt} | {fmt_ratio(ratio(r, rate(shape, 'uvring-epoll')))} "
                f"| {'-' if share is None else f'{share * 100:.0f} %'} | {n} |"
            )
        md.append("")

    def verdict(r, bar, le):
        if r is None:
            return "not measured"
        ok = r <= bar if le else r >= bar
        return f"{r:.2f}x (bar {'<=' if le else '>='} {bar}x): " + ("**met**" if ok else "**missed**")

    big, one = "64c/64B", "1c/64B"
    md += ["### design bars (this run, medians)", ""]
    md.append(f"- 64 connections x 64 B, server CPU per round trip, io_uring / epoll: "
              f"{verdict(ratio(cpu(big, 'uvring-io_uring'), cpu(big, 'uvring-epoll')), 0.85, True)}")
    md.append(f"- 64 connections x 64 B, server CPU per round trip, io_uring / monoio: "
              f"{verdict(ratio(cpu(big, 'uvring-io_uring'), cpu(big, 'monoio')), 0.95, True)}")
    md.append(f"- 1 connection x 64 B, round trips/s, io_uring / epoll: "
              f"{verdict(ratio(rate(one, 'uvring-io_uring'), rate(one, 'uvring-epoll')), 0.95, False)}")
    md.append("")
    text = "\n".join(md)
    with open(f"{prefix}.md", "w") as f:
        f.write(text)
    with open(f"{prefix}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mode", "shape", "server", "server_cpu_us_per_rt_median", "cpu_vs_uvring_epoll",
                    "rate_median", "rate_vs_uvring_epoll", "client_cpu_share", "runs"])
        for (shape, server), ((c, _, _), (r, _, _), share, n) in summary.items():
            rc, rr = ratio(c, cpu(shape, "uvring-epoll")), ratio(r, rate(shape, "uvring-epoll"))
            w.writerow(["external", shape, server, "" if c is None else f"{c:.3f}", "" if rc is None else f"{rc:.3f}",
                        "" if r is None else f"{r:.0f}", "" if rr is None else f"{rr:.3f}",
                        "" if share is None else f"{share:.3f}", n])
    print(text)


if __name__ == "__main__":
    main()
