#!/usr/bin/env python3
"""plot-scaling.py CSV SVG - the scaling figure of BENCHMARKS.md from scripts/bench-scaling.sh.

Four panels: readings per second (wall clock and per CPU-second of eddy) and peak RSS against
the number of sensors (2 windows), and against the number of windows (1000 sensors). Every run
is a dot, the median of each point a line. Plain SVG from the standard library: no plotting
package to install.
"""
import csv
import math
import statistics
import sys


def load(path):
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("readings_per_s")]


def panel(x0, y0, width, height, title, xlabel, ylabel, series, xlog):
    """Returns SVG elements for one panel; series: [(label, colour, {x: [y, ...]})]."""
    out = [f'<g transform="translate({x0},{y0})">']
    out.append(f'<text x="{width / 2}" y="-12" text-anchor="middle" font-weight="bold">{title}</text>')
    xs = sorted({x for _, _, points in series for x in points})
    ys = [y for _, _, points in series for values in points.values() for y in values]
    if not xs or not ys:
        return out + ["</g>"]
    ymax = max(ys) * 1.15
    ymax = 10 ** math.floor(math.log10(ymax)) * math.ceil(ymax / 10 ** math.floor(math.log10(ymax)))

    def fx(x):
        if len(xs) == 1:
            return width / 2
        if xlog:
            lo, hi = math.log10(xs[0]), math.log10(xs[-1])
            return (math.log10(x) - lo) / (hi - lo) * width
        return (x - xs[0]) / (xs[-1] - xs[0]) * width

    def fy(y):
        return height - y / ymax * height

    out.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="none" stroke="#999"/>')
    for tick in range(6):
        value = ymax * tick / 5
        y = fy(value)
        out.append(f'<line x1="0" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        label = f"{value / 1e6:.1f}M" if ymax >= 2e6 else (f"{value / 1e3:.0f}k" if ymax >= 2e3 else f"{value:.1f}")
        out.append(f'<text x="-6" y="{y + 4:.1f}" text-anchor="end" font-size="11">{label}</text>')
    for x in xs:
        out.append(f'<text x="{fx(x):.1f}" y="{height + 16}" text-anchor="middle" font-size="11">{x:,}</text>')
    out.append(f'<text x="{width / 2}" y="{height + 34}" text-anchor="middle" font-size="12">{xlabel}</text>')
    out.append(
        f'<text transform="translate(-52,{height / 2}) rotate(-90)" text-anchor="middle" font-size="12">{ylabel}</text>'
    )
    for idx, (label, colour, points) in enumerate(series):
        medians = [(fx(x), fy(statistics.median(points[x]))) for x in xs if x in points]
        path = " ".join(f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}" for i, (px, py) in enumerate(medians))
        out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x in xs:
            for y in points.get(x, []):
                out.append(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="2.5" fill="{colour}"/>')
        out.append(f'<rect x="{10}" y="{8 + idx * 16}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{26}" y="{17 + idx * 16}" font-size="11">{label}</text>')
    out.append("</g>")
    return out


def group(rows, key, where, value, scale=1.0):
    points = {}
    for row in rows:
        if all(row[k] == v for k, v in where.items()):
            points.setdefault(int(row[key]), []).append(float(row[value]) * scale)
    return points


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot-scaling.py CSV SVG")
    rows = load(sys.argv[1])
    width, height = 330, 210
    speed = [("readings/s, wall clock", "#1f77b4", "readings_per_s"), ("readings per CPU-second of eddy", "#d62728", "readings_per_cpu_s")]
    body = []
    by_sensors = {"windows": "2"}
    by_windows = {"sensors": "1000"}
    body += panel(80, 40, width, height, "Throughput by sensors (2 windows)", "sensors", "readings/s",
                  [(label, colour, group(rows, "sensors", by_sensors, column)) for label, colour, column in speed], True)
    body += panel(80 + width + 110, 40, width, height, "Peak RSS by sensors (2 windows)", "sensors", "MiB",
                  [("eddy peak RSS (VmHWM)", "#2ca02c", group(rows, "sensors", by_sensors, "peak_rss_kib", 1 / 1024))], True)
    body += panel(80, 40 + height + 90, width, height, "Throughput by windows (1000 sensors)", "windows", "readings/s",
                  [(label, colour, group(rows, "windows", by_windows, column)) for label, colour, column in speed], False)
    body += panel(80 + width + 110, 40 + height + 90, width, height, "Peak RSS by windows (1000 sensors)", "windows", "MiB",
                  [("eddy peak RSS (VmHWM)", "#2ca02c", group(rows, "windows", by_windows, "peak_rss_kib", 1 / 1024))], False)
    total_w, total_h = 80 + 2 * width + 110 + 30, 40 + 2 * height + 90 + 50
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" font-family="sans-serif">',
        f'<rect width="{total_w}" height="{total_h}" fill="white"/>',
        *body,
        "</svg>",
    ]
    with open(sys.argv[2], "w") as handle:
        handle.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
