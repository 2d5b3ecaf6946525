#!/usr/bin/python3
"""torchvision's ImageFolder + DataLoader on the same files, the baseline for `stride bench loader`.

RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize, PIL decode, `--workers` DataLoader
worker processes. Prints one JSON line like `stride bench loader --json`.
"""
import argparse
import json
import resource
import time

import torch
import torchvision
from torchvision import transforms as T


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-path", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup-batches", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = torchvision.datasets.ImageFolder(args.data_path, transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                     drop_last=True, persistent_workers=args.workers > 0)
    it = iter(dl)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(dl)
            return next(it)

    for _ in range(args.warmup_batches):
        next_batch()
    images, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        x, _ = next_batch()
        images += x.shape[0]
    elapsed = time.monotonic() - t0
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"loader": "torchvision", "workers": args.workers, "batch_size": args.batch_size,
                      "images": images, "seconds": elapsed, "images_per_s": images / elapsed,
                      "images_per_s_per_worker": images / elapsed / max(args.workers, 1),
                      "peak_rss_mb": rss / 1024.0}))


if __name__ == "__main__":
    main()
