#!/usr/bin/env python3
"""Prints the README's benchmark tables from the runs given, one column per
server, each cell the runs' values side by side (run 1 · run 2 · …):

    bench/table.py bench/results/run-*.jsonl

The input is what scripts/bench.sh records: one JSON object per line.
"""
import sys

from runs import first_matches, load

runs = load(sys.argv[1:])

SERVERS = ["broker", "broker static", "nginx+nchan"]


def cell(server, match, show):
    found = [show(line) for line in first_matches(runs, server, match)]
    return " · ".join(found) if found else "—"


def number(value, digits=0):
    text = f"{value:,.{digits}f}".replace(",", " ")
    return text


ms = lambda field: lambda line: f"{line[field]:.2f}"
kib = lambda field: lambda line: f"{line[field]:.1f}"
mib = lambda field: lambda line: f"{line[field] / 1024:.1f}"
pct = lambda field: lambda line: f"{line[field]:.1f}"
rate = lambda field: lambda line: number(line[field])
ONE = lambda tenants: tenants == 1
MANY = lambda tenants: tenants is not None and tenants > 1

ROWS = [
    ("delivered, 50 events/s, N = 1 / 100 / 1000 (%)", None, None),
    ("fan-out p99, N = 1 (ms)", {"scenario": "fanout", "subscribers": 1}, ms("p99_ms")),
    ("fan-out p99, N = 100 (ms)", {"scenario": "fanout", "subscribers": 100}, ms("p99_ms")),
    ("fan-out p99, N = 1000 (ms)", {"scenario": "fanout", "subscribers": 1000}, ms("p99_ms")),
    ("fixed rate 4 000/s, 100 subscribers: delivered (%)", {"scenario": "rate"}, pct("delivered_pct")),
    ("… p50 / p99 (ms)", {"scenario": "rate"}, lambda line: f"{line['p50_ms']:.2f} / {line['p99_ms']:.2f}"),
    ("RSS per idle stream, 10 000 streams (KiB)", {"scenario": "idle"}, kib("rss_per_stream_kib")),
    ("server CPU over 10 s, 10 000 idle streams (s)", {"scenario": "idle"}, lambda line: f"{line['cpu_seconds']:.2f}"),
    ("RSS of a fresh server (MiB)", {"scenario": "idle"}, mib("fresh_rss_kib")),
    ("RSS after one login, before streams (MiB)", {"scenario": "idle"}, mib("rss_before_kib")),
    ("RSS before / 5 s after 50 parallel logins (MiB)", {"scenario": "logins"},
     lambda line: f"{line['rss_idle_kib'] / 1024:.1f} / {line['rss_5s_after_kib'] / 1024:.1f}"),
    ("inserts/s, JWT, 64 connections", {"scenario": "insert", "subscribers": 0, "label": lambda l: l and "Basic" not in l}, rate("requests_per_second")),
    ("inserts/s, HTTP Basic, 64 connections", {"scenario": "insert", "label": lambda l: l and "Basic" in l}, rate("requests_per_second")),
    ("deliveries/s, 64 inserting connections + 100 subscribers", {"scenario": "insert", "subscribers": 100}, rate("deliveries_per_second")),
    ("start-up with 1 000 000 events in 100 tenants (ms)", {"scenario": "startup"}, lambda line: f"{line['startup_ms']:.0f}"),
]


def many_rows():
    shapes = []
    for run in runs:
        for line in run:
            if line.get("scenario") == "many":
                shape = (line["streams"], line["tenants"])
                if shape not in shapes:
                    shapes.append(shape)
    rows = []
    for streams, tenants in shapes:
        match = {"scenario": "many", "streams": streams, "tenants": tenants}
        name = f"{streams} streams, {'1 tenant' if tenants == 1 else f'{tenants} tenants'}"
        rows += [
            (f"{name}: open", match, lambda line: f"{line['opened']}"),
            (f"{name}: RSS per stream, growth / whole RSS (KiB)", match,
             lambda line: f"{line['rss_per_stream_kib']:.1f} / {line['rss_total_per_stream_kib']:.1f}"),
            (f"{name}: delivered (%)", match, pct("delivered_pct")),
            (f"{name}: insert to the last stream, p50 / p99 (ms)", match,
             lambda line: f"{line['p50_ms']:.1f} / {line['p99_ms']:.1f}"),
            (f"{name}: server CPU over 10 s idle, keep-alive round included (s)", match,
             lambda line: f"{line['idle_cpu_seconds']:.2f}"),
        ]
    return rows


print("| figure | " + " | ".join(SERVERS) + " |")
print("|---|" + "---|" * len(SERVERS))
for name, match, show in ROWS + many_rows():
    if match is None:
        cells = []
        for server in SERVERS:
            parts = [cell(server, {"scenario": "fanout", "subscribers": n}, pct("delivered_pct")) for n in (1, 100, 1000)]
            values = " · ".join(parts).split(" · ")
            whole = all(value == "100.0" for value in values)
            cells.append("—" if all(p == "—" for p in parts) else "100 in every run" if whole else " / ".join(parts))
        print(f"| {name} | " + " | ".join(cells) + " |")
        continue
    print(f"| {name} | " + " | ".join(cell(server, match, show) for server in SERVERS) + " |")
