#!/usr/bin/python3
"""PyTorch eager baseline for `stride bench step`: the same model (torchvision's, or the CIFAR-style ResNet
built the same way as Stride's), batch, threads, device and synthetic data; forward, cross-entropy, backward,
SGD with momentum 0.9 and weight decay 1e-4 (not on 1-D parameters). Same flags as `stride bench step`:
--device cuda, --amp (torch.autocast; fp16 adds torch.amp.GradScaler), --amp-dtype, --channels-last."""
import argparse
import contextlib
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


class CifarBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        sc = x
        if self.stride != 1 or self.pad:
            sc = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + sc, inplace=True)


class CifarResNet(nn.Module):
    def __init__(self, depth, in_channels, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, planes in enumerate([16, 32, 64]):
            blocks = []
            for j in range(n):
                blocks.append(CifarBlock(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(name, in_channels, num_classes):
    if name.startswith("resnet") and name[6:].isdigit() and int(name[6:]) in (20, 32, 44, 56, 110):
        return CifarResNet(int(name[6:]), in_channels, num_classes)
    m = getattr(torchvision.models, name)(num_classes=num_classes)
    if in_channels != 3:
        m.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return m


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true")
    p.add_argument("--amp-dtype", default="float16", choices=["float16", "bfloat16"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cuda", 0) if a.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as torchvision's reference train.py; stride bench step too
    amp_dtype = torch.float16 if a.amp_dtype == "float16" else torch.bfloat16
    torch.manual_seed(0)
    model = build(a.model, a.in_channels, a.num_classes).to(device)
    x = torch.randn(a.batch_size, a.in_channels, a.image_size, a.image_size).to(device)
    y = torch.randint(a.num_classes, (a.batch_size,)).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.01, momentum=0.9)

    # Loss scaling for fp16 only: bf16 has float32's range. torch.amp.GradScaler is torch >= 2.3's name.
    scale = a.amp and amp_dtype == torch.float16
    if hasattr(torch.amp, "GradScaler"):
        scaler = torch.amp.GradScaler(device.type, enabled=scale)
    else:
        scaler = torch.cuda.amp.GradScaler(enabled=scale)
    last = {}

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if a.amp else contextlib.nullcontext()

    def step():
        with autocast():
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=False)
        last["loss"] = loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(a.warmup):
        step()
    sync()
    t0 = time.monotonic()
    for _ in range(a.steps):
        step()
    sync()
    secs = time.monotonic() - t0
    print(json.dumps({"impl": "pytorch", "model": a.model, "batch": a.batch_size, "image_size": a.image_size,
                      "device": a.device,
                      "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "threads": torch.get_num_threads(), "channels_last": a.channels_last, "amp": a.amp,
                      "amp_dtype": a.amp_dtype if a.amp else "float32", "steps": a.steps,
                      "last_loss": last["loss"].item(), "torch": torch.__version__, "seconds": secs,
                      "images_per_s": a.batch_size * a.steps / secs}))


if __name__ == "__main__":
    main()
