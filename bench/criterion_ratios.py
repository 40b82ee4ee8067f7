#!/usr/bin/env python3
"""Prints the design's engine ratios from the last `cargo bench -p uvring-bench`.

Reads criterion's estimates (median time per iteration) under
$CARGO_TARGET_DIR/criterion (default: target/criterion at the repo root),
and prints a markdown table: echo per shape (epoll, io_uring, tokio, the
ratios and the bars), churn, timers.

  cargo bench -p uvring-bench && python3 bench/criterion_ratios.py
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRIT = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "criterion")


def median_ns(*parts):
    path = os.path.join(CRIT, *parts, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None


def verdict(r, bar):
    if r is None:
        return "not measured"
    return f"{r:.2f}x (bar {bar}x) " + ("met" if r >= bar else "MISSED")


def main():
    if not os.path.isdir(CRIT):
        print(f"no criterion results under {CRIT}; run cargo bench -p uvring-bench first", file=sys.stderr)
        sys.exit(1)
    shapes = [("1c", "64B", 1), ("64c", "64B", 64), ("1c", "16KiB", 1), ("64c", "16KiB", 64)]
    print("Echo, in-process (server and clients in one loop; see bench/echo_external.sh for an external client):")
    print()
    print("| echo shape | epoll us/trip | io_uring us/trip | tokio us/trip | io_uring/epoll | best uvring/tokio | epoll/tokio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    found = {}
    for conns, size, n in shapes:
        d = f"{conns}_{size}"
        e, u, t = (median_ns("echo", p, d) for p in ("epoll", "io_uring", "tokio"))
        found[(conns, size)] = (e, u, t)

        def us(x):
            return "-" if x is None else f"{x / 1000 / n:.2f}"

        def r(a, b):
            return None if a is None or b is None else a / b

        best = min(x for x in (e, u) if x is not None) if (e or u) else None
        cells = [r(e, u), r(t, best), r(t, e)]
        print(f"| {conns}/{size} | {us(e)} | {us(u)} | {us(t)} | "
              + " | ".join("-" if c is None else f"{c:.2f}x" for c in cells) + " |")
    print()
    e, u, t = found[("64c", "64B")]
    best = min(x for x in (e, u) if x is not None) if (e or u) else None
    print("In-process echo ratios (64 B messages; the design's echo bars are on bench/echo_external.sh):")
    print(f"- 64 connections, io_uring vs epoll: {verdict(e / u if e and u else None, 1.2)}")
    print(f"- 64 connections, faster backend vs tokio current-thread: {verdict(t / best if t and best else None, 1.2)}")
    e1, u1, _ = found[("1c", "64B")]
    print(f"- 1 connection, io_uring vs epoll: {verdict(e1 / u1 if e1 and u1 else None, 0.95)}")
    print()
    churn = {p: median_ns("churn", f"{p}_16p") for p in ("epoll", "io_uring", "tokio")}
    if any(churn.values()):
        print("| churn (16 in parallel) | connections/s |")
        print("|---|---:|")
        for p, ns in churn.items():
            print(f"| {p} | {'-' if ns is None else f'{1e9 / ns:,.0f}'} |")
        if churn["epoll"] and churn["io_uring"]:
            print(f"\nchurn io_uring/epoll: {churn['epoll'] / churn['io_uring']:.2f}x"
                  + (f", io_uring/tokio: {churn['tokio'] / churn['io_uring']:.2f}x" if churn["tokio"] else ""))
        print()
    timers = median_ns("timers", "start_stop_10k")
    if timers:
        print(f"timers: 10k start+stop in {timers / 1000:.0f} us = {timers / 10000:.1f} ns per start+stop pair")


if __name__ == "__main__":
    main()
