#!/usr/bin/env python3
"""Plots scripts/bench.sh's scaling figures: put throughput and p99 latency
against the number of clients, one line per server, as an SVG with two
panels. Standard library only (the machines have no plotting package).

Usage: bench-plot.py FIGURES.csv OUT.svg
FIGURES.csv has the columns server,clients,rps,p99_ms; empty cells (a
failed run) leave a gap.
"""

import csv
import math
import sys

COLORS = {"etcd": "#d62728", "raftkv": "#1f77b4"}
W, H = 440, 300  # one panel
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50


def read(path):
    series = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            pts = series.setdefault(row["server"], [])
            rps = float(row["rps"]) if row["rps"] else None
            p99 = float(row["p99_ms"]) if row["p99_ms"] else None
            pts.append((int(row["clients"]), rps, p99))
    return series


def nice_ticks(lo, hi, log):
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return [10.0 ** e for e in range(a, b + 1)]
    # The finest of 1, 2 or 5 times a power of ten that makes at most six
    # intervals.
    base = 10 ** (math.floor(math.log10(hi - lo or 1)) - 1)
    step = base * 100
    for m in (1, 2, 5, 10, 20, 50):
        if (hi - lo) / (base * m) <= 6:
            step = base * m
            break
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step / 2:
        ticks.append(t)
        t += step
    return ticks


def label(v):
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def panel(x0, title, ylabel, series, pick, ylog):
    clients = sorted({c for pts in series.values() for c, *_ in pts})
    values = [pick(p) for pts in series.values() for p in pts if pick(p)]
    out = [f'<text x="{x0 + W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    if not values or not clients:
        out.append(f'<text x="{x0 + W / 2}" y="{H / 2}" text-anchor="middle">no figures</text>')
        return out
    ylo = min(values) / 1.5 if ylog else 0
    yhi = max(values) * (1.5 if ylog else 1.1)
    yticks = nice_ticks(ylo, yhi, ylog)
    ylo, yhi = min(ylo, yticks[0]), max(yhi, yticks[-1])
    xlo, xhi = math.log10(min(clients)), math.log10(max(clients)) or 1

    def px(c):
        return x0 + LEFT + (math.log10(c) - xlo) / ((xhi - xlo) or 1) * (W - LEFT - RIGHT)

    def py(v):
        if ylog:
            f = (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))
        else:
            f = (v - ylo) / (yhi - ylo)
        return H - BOTTOM - f * (H - TOP - BOTTOM)

    out.append(f'<rect x="{x0 + LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" fill="none" stroke="#888"/>')
    for t in yticks:
        if ylo <= t <= yhi:
            y = py(t)
            out.append(f'<line x1="{x0 + LEFT}" x2="{x0 + W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{x0 + LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{label(t)}</text>')
    for c in clients:
        x = px(c)
        out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" font-size="11">{c}</text>')
    out.append(f'<text x="{x0 + W / 2}" y="{H - 12}" text-anchor="middle" font-size="12">clients</text>')
    out.append(
        f'<text x="{x0 + 16}" y="{H / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 {x0 + 16} {H / 2})">{ylabel}</text>'
    )
    for name, pts in sorted(series.items()):
        color = COLORS.get(name, "#333")
        coords = [(px(c), py(pick((c, r, p)))) for c, r, p in sorted(pts) if pick((c, r, p))]
        if len(coords) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in coords:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    series = read(sys.argv[1])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 30}" '
        f'font-family="sans-serif" viewBox="0 0 {2 * W} {H + 30}">',
        f'<rect width="{2 * W}" height="{H + 30}" fill="white"/>',
    ]
    parts += panel(0, "put throughput, one member, 256 B values", "requests/s", series, lambda p: p[1], False)
    parts += panel(W, "put p99 latency", "ms (log scale)", series, lambda p: p[2], True)
    for i, name in enumerate(sorted(series)):
        x = 80 + i * 110
        parts.append(f'<line x1="{x}" x2="{x + 24}" y1="{H + 15}" y2="{H + 15}" stroke="{COLORS.get(name, "#333")}" stroke-width="3"/>')
        parts.append(f'<text x="{x + 30}" y="{H + 19}" font-size="12">{name}</text>')
    parts.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
