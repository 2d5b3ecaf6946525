#!/usr/bin/python3
"""Exports a Stride checkpoint to TorchScript and/or ONNX through python/stride_models.py.

    python/export.py runs/r56/checkpoints/step-00003900 --torchscript r56.pt --onnx r56.onnx
    python/export.py r56.safetensors --onnx r56.onnx --image-size 32        # a `stride ckpt export` file

CHECKPOINT is a checkpoint directory or an exported .safetensors file (stride_models.load_checkpoint). The
model runs in eval mode (BatchNorm uses its running statistics). TorchScript comes from torch.jit.trace and is
checked against the eager model on a random batch before it is written; the ONNX graph takes `input`
[N, C, H, W] float32 with a dynamic batch dimension and gives `logits` [N, classes].
"""
import argparse
import inspect
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stride_models  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint directory (with MANIFEST) or exported .safetensors file")
    p.add_argument("--torchscript", metavar="OUT.pt", help="write a traced TorchScript module")
    p.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX model")
    p.add_argument("--ema", action="store_true", help="export the checkpoint's EMA weights")
    p.add_argument("--model", help="model name, for files that do not record it")
    p.add_argument("--image-size", type=int, help="side of the example input (default: the model's own)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset version (default: %(default)s)")
    args = p.parse_args(argv)
    if not args.torchscript and not args.onnx:
        p.error("nothing to do: give --torchscript OUT.pt and/or --onnx OUT.onnx")
    return args


def example_input(model, image_size=None, batch=2):
    side = image_size or model.spec["image_size"]
    return torch.randn(batch, model.in_channels, side, side, generator=torch.Generator().manual_seed(0))


def export_torchscript(model, x, path):
    """Traces `model` on `x`, checks the traced module against the eager one, saves it. Returns the max abs diff."""
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        diff = (traced(x) - model(x)).abs().max().item()
    if diff > 1e-5 * max(1.0, model(x).abs().max().item()):
        raise RuntimeError("traced module differs from the eager model by %g" % diff)
    traced.save(path)
    return diff


def export_onnx(model, x, path, opset):
    extra = {}
    # torch >= 2.5 also has the dynamo-based exporter (the default in newer releases); the TorchScript-based one is
    # what torch 1.13 has, so both versions write the same graph.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        extra["dynamo"] = False
    with torch.no_grad():
        torch.onnx.export(model, x, path, input_names=["input"], output_names=["logits"], opset_version=opset,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True,
                          **extra)


def main(argv=None):
    args = parse_args(argv)
    try:
        model = stride_models.load_model(args.checkpoint, ema=args.ema, name=args.model)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        sys.exit("export.py: error: %s: %s" % (args.checkpoint, e))
    x = example_input(model, args.image_size)
    print("%s: %s, %d classes, input %s" % (args.checkpoint, model.name, model.num_classes, list(x.shape)))
    if args.torchscript:
        diff = export_torchscript(model, x, args.torchscript)
        print("torchscript: %s (traced, max abs diff to eager %.3g)" % (args.torchscript, diff))
    if args.onnx:
        export_onnx(model, x, args.onnx, args.opset)
        print("onnx: %s (opset %d, input 'input' [batch, %d, H, W], output 'logits')" % (args.onnx, args.opset,
                                                                                          model.in_channels))


if __name__ == "__main__":
    main()
