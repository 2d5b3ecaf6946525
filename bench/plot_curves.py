#!/usr/bin/python3
"""Plots a per-epoch metric from several runs' metrics.jsonl into one SVG (no plotting library needed).

  plot_curves.py --metric train_err --out docs/degradation.svg LABEL=RUN_DIR [LABEL=RUN_DIR ...]
Reads the "train" records (running train_err / loss per print interval, x = fractional epoch) and the
"epoch" / "eval" records (x = epoch) of each run; use --records to pick.
"""
import argparse
import json
import os

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def series(run_dir, metric, records):
    """(x, y) points: x is the fractional epoch for "train" records, the epoch number otherwise."""
    points = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("type") != records or metric not in r:
                continue
            x = r["epoch_progress"] if records == "train" else r["epoch"]
            points.append((round(x, 3), r[metric]))
    return points


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--metric", default="train_err")
    p.add_argument("--records", default="train", choices=["train", "epoch", "eval"])
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True)
    p.add_argument("runs", nargs="+")
    a = p.parse_args()
    data = []
    for spec in a.runs:
        label, run = spec.split("=", 1)
        data.append((label, series(run, a.metric, a.records)))
    xs = [x for _, s in data for x, _ in s] or [0, 1]
    ys = [y for _, s in data for _, y in s] or [0, 1]
    x0, x1 = min(xs), max(xs)
    y0, y1 = 0.0, max(ys) * 1.1
    W, H, L, R, T, B = 640, 400, 60, 150, 40, 50
    sx = lambda x: L + (x - x0) / max(x1 - x0, 1e-9) * (W - L - R)
    sy = lambda y: H - B - (y - y0) / max(y1 - y0, 1e-9) * (H - T - B)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{a.title or a.metric}</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">epoch</text>',
           f'<text x="15" y="{(T + H - B) / 2}" transform="rotate(-90 15 {(T + H - B) / 2})" text-anchor="middle">{a.metric}</text>']
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        out.append(f'<line x1="{L - 4}" y1="{sy(y):.1f}" x2="{W - R}" y2="{sy(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.1f}</text>')
    for i in range(int(x0), int(x1) + 1):
        out.append(f'<text x="{sx(i):.1f}" y="{H - B + 16}" text-anchor="middle">{i}</text>')
    for i, (label, s) in enumerate(data):
        c = COLORS[i % len(COLORS)]
        dash = ' stroke-dasharray="6 3"' if label.startswith("plain") else ""
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
        ly = T + 20 * i + 10
        out.append(f'<line x1="{W - R + 10}" y1="{ly}" x2="{W - R + 35}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{W - R + 40}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")
    for label, s in data:
        print(label, " ".join(f"{x}:{y:.2f}" for x, y in s[-3:]), f"({len(s)} points)")


if __name__ == "__main__":
    main()
