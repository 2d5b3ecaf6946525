#!/usr/bin/python3
"""PyTorch DistributedDataParallel baseline for `stride bench step` under mpirun: the same model (bench/
torch_train_step.py's `build`), per-rank batch, threads, synthetic data and optimizer (SGD momentum 0.9, weight
decay 1e-4 except 1-D parameters), gloo back-end, DDP's default 25 MiB buckets. Rank and world size come from
Open MPI's environment (OMPI_COMM_WORLD_RANK/SIZE) or torchrun's (RANK/WORLD_SIZE).
--no-sync skips gradient communication (DDP's no_sync()) to give the communication-free reference.
--amp runs the forward pass and the loss under torch.autocast("cpu", torch.bfloat16) (parameters, gradients and
optimizer state stay float32; no loss scaling), --channels-last converts the model and the batch to NHWC.
Prints one JSON line (rank 0): global images/s = world x batch x steps / the slowest rank's time."""
import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from torch_train_step import build


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--bucket-cap-mb", type=float, default=25.0)
    p.add_argument("--no-sync", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on the CPU")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--port", type=int, default=29517)
    a = p.parse_args()
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0")))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(a.port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = build(a.model, a.in_channels, a.num_classes)
    if a.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = DDP(net, bucket_cap_mb=a.bucket_cap_mb)
    decay = [q for q in model.parameters() if q.dim() > 1]
    no_decay = [q for q in model.parameters() if q.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(a.batch_size, a.in_channels, a.image_size, a.image_size, generator=g)
    y = torch.randint(a.num_classes, (a.batch_size,), generator=g)
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()

    def loss():
        with torch.autocast("cpu", torch.bfloat16) if a.amp else contextlib.nullcontext():
            return F.cross_entropy(model(x), y)

    def step():
        if a.no_sync:
            with model.no_sync():
                loss().backward()
        else:
            loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    for _ in range(a.warmup):
        step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    secs = torch.tensor([time.perf_counter() - t0])
    dist.all_reduce(secs, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(json.dumps({"impl": "pytorch-ddp" + ("-nosync" if a.no_sync else ""), "model": a.model, "ranks": world,
                          "batch": a.batch_size, "image_size": a.image_size, "threads": a.threads, "steps": a.steps,
                          "amp_dtype": "bfloat16" if a.amp else "float32", "channels_last": a.channels_last,
                          "seconds": secs.item(),
                          "images_per_s": world * a.batch_size * a.steps / secs.item()}), flush=True)
    dist.barrier()
    # Leave without tearing down gloo's threads: a rank left spinning after its peer exits would steal a core from
    # the next measurement.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
