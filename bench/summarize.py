#!/usr/bin/env python3
"""Markdown tables for bench/compare.sh.

    summarize.py RESULTS.tsv HELD_CONNS    load runs: medians and ratios
    summarize.py --profile RESULTS.tsv     callgrind: instructions per request
    summarize.py --idle RESULTS.tsv HELD   idle connections: RSS per connection
    summarize.py --top REQUESTS < annotate callgrind_annotate output: top functions

RESULTS.tsv holds `metric <TAB> proxy <TAB> round <TAB> value` lines.
"""

import re
import statistics
import sys
from collections import defaultdict

PROXIES = ["stampgate", "haproxy", "nginx"]
BASELINE = "haproxy"

#: (metric, label, better) in table order; better is "higher" or "lower".
LOAD_ROWS = [
    ("h1.rps", "HTTP/1.1 keep-alive, req/s (wrk -c64)", "higher"),
    ("h1.per_cpu_s", "HTTP/1.1 keep-alive, req per proxy CPU-s", "higher"),
    ("h1.proxy_cores", "HTTP/1.1 keep-alive, proxy CPU use (cores)", "-"),
    ("lat.p50_ms", "latency p50 at 5,000 req/s (ms)", "lower"),
    ("lat.p99_ms", "latency p99 at 5,000 req/s (ms)", "lower"),
    ("lat.p999_ms", "latency p99.9 at 5,000 req/s (ms)", "lower"),
    ("lat.achieved_rps", "latency run, achieved req/s", "-"),
    ("lat.per_cpu_s", "latency run (5,000 req/s), req per proxy CPU-s", "higher"),
    ("lat.proxy_cores", "latency run (5,000 req/s), proxy CPU use (cores)", "lower"),
    ("h2c.rps", "h2c, req/s (h2load -c64 -m10)", "higher"),
    ("h2c.per_cpu_s", "h2c, req per proxy CPU-s", "higher"),
    ("h2c.proxy_cores", "h2c, proxy CPU use (cores)", "-"),
    ("tls.rps", "TLS keep-alive, req/s (wrk https -c64)", "higher"),
    ("tls.per_cpu_s", "TLS keep-alive, req per proxy CPU-s", "higher"),
    ("tls.proxy_cores", "TLS keep-alive, proxy CPU use (cores)", "-"),
    ("handshake.rps", "TLS new handshakes/s (Connection: close)", "higher"),
    ("handshake.per_cpu_s", "TLS handshakes per proxy CPU-s", "higher"),
    ("handshake.proxy_cores", "TLS handshakes, proxy CPU use (cores)", "-"),
    ("rss.idle_mib", "RSS idle (MiB)", "lower"),
    ("rss.load_mib", "RSS peak under HTTP/1.1 load (MiB)", "lower"),
    ("rss.held_mib", "RSS with {held} idle keep-alive conns (MiB)", "lower"),
    ("held.opened", "idle conns opened (of {held})", "higher"),
    ("held.closed", "idle conns closed by the proxy during the hold", "lower"),
]
#: `compare.sh --idle`: the hold alone, with RSS per held connection (not
#: in the full run, where the held connections reuse memory the load runs
#: freed).
IDLE_ROWS = [
    LOAD_ROWS[-3],
    ("held.kib_per_conn", "RSS per idle keep-alive conn (KiB)", "lower"),
    *LOAD_ROWS[-2:],
]
ERROR_METRICS = ["h1.errors", "lat.errors", "h2c.errors", "tls.errors", "handshake.errors"]
PROFILE_ROWS = [
    ("ir.h1", "HTTP/1.1 keep-alive: user-space instructions per request", "lower"),
    ("ir.h2c", "h2c (10 streams per connection): instructions per request", "lower"),
    ("ir.tls", "TLS HTTP/1.1 keep-alive: instructions per request", "lower"),
]
#: Reference columns: the origin measured directly (ceiling of the shared core).
ORIGIN_METRICS = ("h1.rps", "lat.p50_ms", "lat.p99_ms", "lat.p999_ms", "lat.achieved_rps")


def fmt(v):
    if v is None:
        return "—"
    if v == int(v) and abs(v) < 100:
        return f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def load(path):
    runs = defaultdict(dict)  # (metric, proxy) -> {round: value}
    for line in open(path):
        metric, proxy, rnd, value = line.rstrip("\n").split("\t")
        runs[(metric, proxy)][int(rnd)] = float(value)
    return runs


def table(runs, rows, held="", origin=False):
    def median(metric, proxy):
        vals = runs.get((metric, proxy))
        return statistics.median(vals.values()) if vals else None

    head = "| measure | better | stampgate | HAProxy | nginx | stampgate/HAProxy | nginx/HAProxy |"
    rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    if origin:
        head += " origin direct |"
        rule += " ---: |"
    print(head)
    print(rule)
    for metric, label, better in rows:
        m = {p: median(metric, p) for p in PROXIES}
        base = m[BASELINE]

        def ratio(p):
            return f"{m[p] / base:.2f}×" if base and m[p] is not None else "—"

        line = (f"| {label.format(held=held)} | {better} | {fmt(m['stampgate'])} "
                f"| {fmt(m['haproxy'])} | {fmt(m['nginx'])} | {ratio('stampgate')} "
                f"| {ratio('nginx')} |")
        if origin:
            ref = median(metric, "origin") if metric in ORIGIN_METRICS else None
            line += f" {fmt(ref)} |"
        print(line)
    return median


def load_report(path, held):
    runs = load(path)
    print("Medians over the rounds; ratios are proxy / HAProxy.\n")
    table(runs, LOAD_ROWS, held, origin=True)
    errors = {p: sum(sum(runs.get((e, p), {}).values()) for e in ERROR_METRICS)
              for p in PROXIES}
    print(f"| errors over all runs (non-2xx, socket) | lower | {errors['stampgate']:.0f} "
          f"| {errors['haproxy']:.0f} | {errors['nginx']:.0f} | | | |")

    print("\nPer round (the spread behind the medians):\n")
    print("| measure | proxy | rounds |")
    print("| --- | --- | --- |")
    for metric in ["h1.rps", "h1.per_cpu_s", "lat.p99_ms", "lat.per_cpu_s",
                   "h2c.per_cpu_s", "tls.per_cpu_s", "handshake.per_cpu_s"]:
        for p in PROXIES:
            vals = runs.get((metric, p), {})
            shown = ", ".join(fmt(vals[r]) for r in sorted(vals))
            print(f"| {metric} | {p} | {shown} |")


def profile_report(path):
    print("User-space instructions per request under callgrind (the kernel's "
          "share is not counted; all three make the same reads and writes "
          "per request).\n")
    table(load(path), PROFILE_ROWS)


def top_functions(requests, lines, limit=30):
    """Self cost per request of the hottest functions in callgrind_annotate output."""
    pattern = re.compile(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(?:\*\s+)?(.*)$")
    print("| instr/req | share | function |")
    print("| ---: | ---: | --- |")
    shown = 0
    for line in lines:
        m = pattern.match(line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        ir, share, name = int(m.group(1).replace(",", "")), float(m.group(2)), m.group(3)
        if share >= 90:  # thread entry points: everything is below them
            continue
        name = re.sub(r"/root/\.cargo/registry/src/[^/]+/", "", name)
        name = re.sub(r"/rustc/[0-9a-f]+/library/", "", name)
        name = re.sub(r" \[[^\]]*\]$", "", name)
        print(f"| {ir / requests:,.0f} | {share:.1f}% | `{name[:150]}` |")
        shown += 1
        if shown >= limit:
            break


def main():
    args = sys.argv[1:]
    if args[:1] == ["--profile"]:
        profile_report(args[1])
    elif args[:1] == ["--idle"]:
        table(load(args[1]), IDLE_ROWS, args[2])
    elif args[:1] == ["--top"]:
        # Read everything first: stopping early would SIGPIPE the writer.
        top_functions(int(args[1]), sys.stdin.readlines())
    else:
        load_report(args[0], args[1])


if __name__ == "__main__":
    main()
