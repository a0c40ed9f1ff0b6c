#!/usr/bin/env python3
"""Draws the benchmark's side-by-side figures as one SVG (no dependencies):
fan-out latency against the number of subscribers, the fixed-rate scenario,
memory per idle stream, and throughput, broker against nginx + nchan. Each
bar is the median of the runs given; each dot is one run.

    bench/chart.py bench/results/run-*.jsonl > docs/bench.svg

The input is what scripts/bench.sh records: one JSON object per line.
"""
import statistics, sys

from runs import first_matches, load

runs = load(sys.argv[1:])


def values(server, match, field):
    """One value per run: the field of the first line matching `match`."""
    lines = first_matches(runs, server, match)
    return [float(line[field]) for line in lines if line.get(field) is not None]


SERVERS = [("broker", "#2a6fdb"), ("broker static", "#7fa8ea"), ("nginx+nchan", "#e07b39")]
ONE = lambda tenants: tenants == 1
MANY = lambda tenants: tenants is not None and tenants > 1
PANELS = [
    ("Fan-out p99 latency (ms), 50 events/s", [
        (f"N={n}", {"scenario": "fanout", "subscribers": n}, "p99_ms") for n in (1, 100, 1000)]),
    ("Fixed rate 4 000/s, 100 subscribers (ms)", [
        ("p50", {"scenario": "rate"}, "p50_ms"), ("p99", {"scenario": "rate"}, "p99_ms")]),
    ("RSS per idle stream (KiB)", [
        ("10 000 streams", {"scenario": "idle"}, "rss_per_stream_kib")]),
    ("Many streams: RSS per stream (KiB)", [
        ("1 tenant", {"scenario": "many", "tenants": ONE}, "rss_per_stream_kib"),
        ("10 per tenant", {"scenario": "many", "tenants": MANY}, "rss_per_stream_kib")]),
    ("Many streams: to the last one, p99 (ms)", [
        ("1 tenant", {"scenario": "many", "tenants": ONE}, "p99_ms"),
        ("10 per tenant", {"scenario": "many", "tenants": MANY}, "p99_ms")]),
    ("Thousands per second, 64 connections", [
        ("inserts", {"scenario": "insert", "subscribers": 0, "connections": 64}, "requests_per_second"),
        ("deliveries (100 subs)", {"scenario": "insert", "subscribers": 100}, "deliveries_per_second")]),
]

WIDTH, HEIGHT, TOP, BOTTOM = 300, 260, 40, 50
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH * len(PANELS)}" height="{HEIGHT + 30}" '
       'font-family="sans-serif" font-size="11">',
       f'<rect width="100%" height="100%" fill="white"/>']
for index, (title, groups) in enumerate(PANELS):
    left = index * WIDTH + 40
    inner = WIDTH - 60
    scale = 1000.0 if title.startswith("Thousands") else 1.0
    data = [[[v / scale for v in values(server, match, field)] for server, _ in SERVERS]
            for _, match, field in groups]
    peak = max([max(v, default=0) for group in data for v in group] + [1e-9]) * 1.15
    y = lambda value: TOP + (HEIGHT - TOP - BOTTOM) * (1 - value / peak)
    svg.append(f'<text x="{left + inner / 2}" y="20" text-anchor="middle" font-weight="bold">{title}</text>')
    svg.append(f'<line x1="{left}" y1="{y(0)}" x2="{left + inner}" y2="{y(0)}" stroke="#333"/>')
    for tick in range(5):
        value = peak * tick / 4
        label = f"{value:.0f}" if value >= 100 else f"{value:.3g}"
        svg.append(f'<text x="{left - 4}" y="{y(value) + 4}" text-anchor="end" fill="#555">{label}</text>')
        svg.append(f'<line x1="{left}" y1="{y(value)}" x2="{left + inner}" y2="{y(value)}" stroke="#eee"/>')
    slot = inner / len(groups)
    bar = slot / (len(SERVERS) + 1)
    for number, (label, _, _) in enumerate(groups):
        for which, (server, color) in enumerate(SERVERS):
            runs_here = data[number][which]
            x = left + number * slot + bar * (which + 0.5)
            if runs_here:
                median = statistics.median(runs_here)
                svg.append(f'<rect x="{x:.1f}" y="{y(median):.1f}" width="{bar * 0.9:.1f}" '
                           f'height="{y(0) - y(median):.1f}" fill="{color}" opacity="0.8"/>')
                for value in runs_here:
                    svg.append(f'<circle cx="{x + bar * 0.45:.1f}" cy="{y(value):.1f}" r="2.5" fill="#111"/>')
        svg.append(f'<text x="{left + (number + 0.5) * slot:.1f}" y="{y(0) + 15}" text-anchor="middle">{label}</text>')
for which, (server, color) in enumerate(SERVERS):
    svg.append(f'<rect x="{40 + which * 120}" y="{HEIGHT + 8}" width="12" height="12" fill="{color}"/>')
    svg.append(f'<text x="{56 + which * 120}" y="{HEIGHT + 18}">{server}</text>')
svg.append(f'<text x="{420}" y="{HEIGHT + 18}" fill="#555">bars: median of {len(runs)} runs; dots: each run</text>')
svg.append('</svg>')
print("\n".join(svg))
