#!/usr/bin/python3
"""Writes a synthetic ImageFolder tree of JPEGs for the loader benchmark.

Images are ~500x375 (sizes vary a little, as photos do), built from smooth random colour fields plus grain so
they compress like natural images (tens of KB at quality 90). Deterministic for a given --seed.
"""
import argparse
import os

import numpy as np
from PIL import Image


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    for c in range(args.classes):
        os.makedirs(os.path.join(args.out, f"class{c:02d}"), exist_ok=True)
    total = 0
    for i in range(args.images):
        w = int(rng.integers(480, 521))
        h = int(rng.integers(360, 391))
        coarse = rng.integers(0, 256, size=(int(rng.integers(4, 12)), int(rng.integers(4, 12)), 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 12, size=img.shape), 0, 255).astype(np.uint8)
        path = os.path.join(args.out, f"class{i % args.classes:02d}", f"img{i:06d}.jpg")
        Image.fromarray(img).save(path, quality=90)
        total += os.path.getsize(path)
    print(f"{args.images} images, {total / args.images / 1024:.1f} KiB on average, in {args.out}")


if __name__ == "__main__":
    main()
