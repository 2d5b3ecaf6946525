#!/usr/bin/python3
"""The Python side of tests/unit/python_models_test.cpp: checks python/stride_models.py against what Stride wrote.

parity DIR:     DIR/cases.json lists cases Stride wrote: {"model", "options", "shapes"} with either "weights" + "io"
                (a state dict and {input, logits} in eval mode: the Python model loads the weights strictly and must
                give the same logits) or only "shapes" (every state-dict key and shape, checked without weights).
                Prints `RESULT <case> <max |python - stride| / max |stride|>` per logits case, `SHAPES <case> ok`.
checkpoint:     load_checkpoint / load_model on a checkpoint directory (model and EMA weights) and on an exported
                file, then python/export.py to TorchScript and ONNX, each checked against Stride's logits.
Exit status 1 with a message on the first mismatch.
"""
import argparse
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
import stride_models as sm  # noqa: E402
import onnx_eval  # noqa: E402  (tests/python, next to this file)


def fail(msg):
    print("FAIL " + msg)
    sys.exit(1)


def rel_diff(a, b):
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)


def check_shapes(case, model):
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = case["shapes"]
    if got != want:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        fail("%s: state dict differs: missing %s, unexpected %s, shapes %s" % (
            case["name"], missing[:5], extra[:5], [(k, want[k], got[k]) for k in wrong[:5]]))


def parity(args):
    with open(os.path.join(args.dir, "cases.json")) as f:
        cases = json.load(f)
    for case in cases:
        options = case["options"]
        if "weights" not in case:
            torch.manual_seed(0)
            check_shapes(case, sm.build_model(case["model"], **options))
            print("SHAPES %s ok" % case["name"])
            continue
        weights, metadata = sm.load_safetensors(os.path.join(args.dir, case["weights"]))
        if metadata.get("model") != case["model"]:
            fail("%s: metadata names model %r" % (case["name"], metadata.get("model")))
        model = sm.build_model(case["model"], **options)
        check_shapes(case, model)
        print("SHAPES %s ok" % case["name"])
        model.load_state_dict(weights, strict=True)
        model.eval()
        io, _ = sm.load_safetensors(os.path.join(args.dir, case["io"]))
        with torch.no_grad():
            logits = model(io["input"])
        if logits.shape != io["logits"].shape:
            fail("%s: logits shape %s, Stride's %s" % (case["name"], list(logits.shape), list(io["logits"].shape)))
        print("RESULT %s %.3e" % (case["name"], rel_diff(logits, io["logits"])))
        sys.stdout.flush()


def checkpoint(args):
    io, _ = sm.load_safetensors(args.io)
    x = io["input"]

    def expect(what, logits, want):
        d = rel_diff(logits, want)
        print("RESULT %s %.3e" % (what, d))
        if d > args.tolerance:
            fail("%s: logits differ from Stride's by %.3e (relative)" % (what, d))

    ckpt = sm.load_checkpoint(args.dir)
    if ckpt["model"] != args.model or ckpt["step"] != args.step or ckpt["ema_state_dict"] is None:
        fail("load_checkpoint(%s): model %r step %r ema %s" % (args.dir, ckpt["model"], ckpt["step"],
                                                              ckpt["ema_state_dict"] is not None))
    with torch.no_grad():
        expect("checkpoint_dir", sm.load_model(args.dir)(x), io["logits"])
        expect("checkpoint_dir_ema", sm.load_model(args.dir, ema=True)(x), io["ema_logits"])
        exported = sm.load_checkpoint(args.exported)
        if exported["model"] != args.model or exported["step"] != args.step:
            fail("load_checkpoint(%s): model %r step %r" % (args.exported, exported["model"], exported["step"]))
        expect("exported_file", sm.load_model(args.exported)(x), io["logits"])

    # Export through python/export.py, as a user would, then run what it wrote.
    ts, ox = os.path.join(args.work, "model.pt"), os.path.join(args.work, "model.onnx")
    cmd = [sys.executable, os.path.join(ROOT, "python", "export.py"), args.dir, "--torchscript", ts, "--onnx", ox,
           "--image-size", str(x.shape[-1])]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    print(r.stdout, end="")
    if r.returncode != 0:
        fail("export.py exited %d" % r.returncode)
    with torch.no_grad():
        expect("torchscript", torch.jit.load(ts)(x), io["logits"])
        # A batch size other than the trace's: the ONNX graph's batch dimension is dynamic.
        x3 = torch.cat([x, x[:1]])
        want3 = torch.cat([io["logits"], io["logits"][:1]])
        expect("onnx", onnx_eval.run(ox, x3), want3)
    print("ok")


def main():
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd")
    a = sub.add_parser("parity")
    a.add_argument("dir")
    c = sub.add_parser("checkpoint")
    c.add_argument("--dir", required=True, help="checkpoint directory with model and EMA weights")
    c.add_argument("--exported", required=True, help="`stride ckpt export` output of the same checkpoint")
    c.add_argument("--io", required=True, help="input, logits and ema_logits Stride computed")
    c.add_argument("--model", required=True)
    c.add_argument("--step", type=int, required=True)
    c.add_argument("--work", required=True, help="directory for the exported TorchScript and ONNX files")
    c.add_argument("--tolerance", type=float, default=1e-5)
    args = p.parse_args()
    if args.cmd == "parity":
        parity(args)
    elif args.cmd == "checkpoint":
        checkpoint(args)
    else:
        p.error("give a subcommand")


if __name__ == "__main__":
    main()
