#!/usr/bin/python3
"""Reference outputs from torchvision for Stride's model parity test.

make:  builds each model with a fixed seed, gives every BatchNorm non-trivial affine parameters and running
       statistics (so eval mode is really exercised), and writes DIR/<model>.safetensors (the state dict) and
       DIR/<model>.io.safetensors (an input batch and the eval-mode logits).
check: loads a state dict that Stride exported into torchvision's model and prints the max abs difference
       between torchvision's logits and the logits Stride stored next to it.
"""
import argparse
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402


def randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)


def make(args):
    os.makedirs(args.out, exist_ok=True)
    for name in args.models:
        torch.manual_seed(args.seed)
        model = getattr(torchvision.models, name)()
        gen = torch.Generator().manual_seed(args.seed + 1)
        randomize_bn(model, gen)
        model.eval()
        x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
        with torch.no_grad():
            logits = model(x)
        safetensors_np.save(os.path.join(args.out, name + ".safetensors"), model.state_dict())
        safetensors_np.save(os.path.join(args.out, name + ".io.safetensors"), {"input": x, "logits": logits})
        print(f"{name}: {len(model.state_dict())} tensors, logits {tuple(logits.shape)}")


def check(args):
    weights = safetensors_np.load(args.weights)
    io = safetensors_np.load(args.io)
    model = getattr(torchvision.models, args.model)(num_classes=io["logits"].shape[1])
    model.load_state_dict(weights, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(io["input"])
    print(f"max_abs_diff {(logits - io['logits']).abs().max().item():.9g}")


def main():
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "resnext50_32x4d"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--batch", type=int, default=2)
    m.add_argument("--size", type=int, default=224)
    c = sub.add_parser("check")
    c.add_argument("--model", required=True)
    c.add_argument("--weights", required=True)
    c.add_argument("--io", required=True)
    args = p.parse_args()
    make(args) if args.cmd == "make" else check(args)


if __name__ == "__main__":
    main()
