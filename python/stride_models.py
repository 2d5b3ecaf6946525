"""Every Stride model in plain PyTorch, and a reader for Stride's weight files. Needs only torch (1.13 or 2.x).

The definitions mirror models/registry.cpp, models/resnet.cpp and models/block.cpp: the same architectures, the
same parameter and buffer names (torchvision's: conv1.weight, layer2.0.downsample.0.weight, fc.bias, plus final_bn.*
for pre-activation networks and layer*.*.se.fc{1,2}.* for squeeze-excitation) and the same forward pass, so a
Stride checkpoint loads with load_state_dict(strict=True) and gives Stride's logits. tests/unit/python_models_test.cpp
checks that for every registered model.

    import stride_models as sm
    model = sm.load_model("runs/r56/checkpoints/step-00003900")   # or an exported .safetensors file
    model = sm.build_model("wrn28_10", num_classes=100)             # fresh, initialised as Stride does
    tensors, metadata = sm.load_safetensors("r56.safetensors")      # no `safetensors` package needed
"""
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["model_names", "model_spec", "build_model", "model_from_state_dict", "load_safetensors",
           "save_safetensors", "load_checkpoint", "load_model", "ResNet", "ResidualBlock", "SqueezeExcite"]

# ---------------------------------------------------------------------------------------------------------------
# Registry (models/registry.cpp)
# ---------------------------------------------------------------------------------------------------------------


def _imagenet(family, blocks, bottleneck, **extra):
    spec = dict(family=family, stem="imagenet", stem_channels=64, blocks=list(blocks), planes=[64, 128, 256, 512],
                bottleneck=bottleneck, preact=False, groups=1, base_width=64, shortcut="projection", se_reduction=0,
                block_dropout=0.0, num_classes=1000, image_size=224)
    spec.update(extra)
    return spec


def _cifar(family, n, shortcut, **extra):
    # He et al. 2015, section 4.2: 6n+2 layers, three stages of 16/32/64 filters.
    spec = dict(family=family, stem="cifar", stem_channels=16, blocks=[n, n, n], planes=[16, 32, 64], bottleneck=False,
                preact=False, groups=1, base_width=64, shortcut=shortcut, se_reduction=0, block_dropout=0.0,
                num_classes=10, image_size=32)
    spec.update(extra)
    return spec


def _build_table():
    r18, r34, r101, r152 = [2, 2, 2, 2], [3, 4, 6, 3], [3, 4, 23, 3], [3, 8, 36, 3]
    t = {}
    t["resnet18"] = _imagenet("resnet", r18, False)
    t["resnet34"] = _imagenet("resnet", r34, False)
    t["resnet50"] = _imagenet("resnet", r34, True)
    t["resnet101"] = _imagenet("resnet", r101, True)
    t["resnet152"] = _imagenet("resnet", r152, True)
    t["resnext50_32x4d"] = _imagenet("resnext", r34, True, groups=32, base_width=4)
    t["resnext101_32x8d"] = _imagenet("resnext", r101, True, groups=32, base_width=8)
    t["resnext101_64x4d"] = _imagenet("resnext", r101, True, groups=64, base_width=4)
    t["wide_resnet50_2"] = _imagenet("wide_resnet", r34, True, base_width=128)
    t["wide_resnet101_2"] = _imagenet("wide_resnet", r101, True, base_width=128)
    for name, blocks, bottleneck in [("se_resnet18", r18, False), ("se_resnet34", r34, False),
                                     ("se_resnet50", r34, True), ("se_resnet101", r101, True)]:
        t[name] = _imagenet("se_resnet", blocks, bottleneck, se_reduction=16)
    for name, blocks, bottleneck in [("preact_resnet18", r18, False), ("preact_resnet34", r34, False),
                                     ("preact_resnet50", r34, True)]:
        t[name] = _imagenet("preact_resnet", blocks, bottleneck, preact=True)
    t["plain18"] = _imagenet("plain", r18, False, shortcut="none")
    t["plain34"] = _imagenet("plain", r34, False, shortcut="none")
    # CIFAR-style: option A (zero-pad) shortcuts, as in the paper's CIFAR-10 experiments.
    for depth in (20, 32, 44, 56, 110):
        t["resnet%d" % depth] = _cifar("resnet", (depth - 2) // 6, "zeropad")
    for depth in (20, 32, 44, 56, 110):
        t["plain%d" % depth] = _cifar("plain", (depth - 2) // 6, "none")
    # Pre-activation CIFAR networks (He et al. 2016) and Wide ResNet 28-10: projection shortcuts.
    t["preact_resnet110"] = _cifar("preact_resnet", 18, "projection", preact=True)
    t["preact_resnet164"] = _cifar("preact_resnet", 18, "projection", preact=True, bottleneck=True)
    t["wrn28_10"] = _cifar("wrn", (28 - 4) // 6, "projection", preact=True, planes=[160, 320, 640])
    return t


_SPECS = _build_table()


def model_names():
    """Every registered name, in `stride models` order."""
    return list(_SPECS)


def model_spec(name):
    """The architecture a name stands for (a copy of the registry entry)."""
    if name not in _SPECS:
        close = [n for n in _SPECS if n.replace("_", "") == name.lower().replace("-", "").replace("_", "")]
        hint = " (did you mean %s?)" % close[0] if close else ""
        raise ValueError("unknown model '%s'%s; stride_models.model_names() lists them all" % (name, hint))
    spec = dict(_SPECS[name])
    spec["name"] = name
    return spec


# ---------------------------------------------------------------------------------------------------------------
# Blocks (models/block.cpp)
# ---------------------------------------------------------------------------------------------------------------


def _conv(cin, cout, kernel, stride=1, groups=1, bias=False):
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias)


class SqueezeExcite(nn.Module):
    """Hu et al. 2018: global pool, 1x1 conv down, ReLU, 1x1 conv up, sigmoid, channel-wise scale."""

    def __init__(self, channels, reduction):
        super().__init__()
        self.fc1 = _conv(channels, channels // reduction, 1, bias=True)
        self.fc2 = _conv(channels // reduction, channels, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


def drop_path(x, p, training):
    """Stochastic depth: zeroes whole samples of the branch with probability p, rescales survivors by 1/(1-p)."""
    if not training or p <= 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask.div_(keep)


class ResidualBlock(nn.Module):
    """Basic or bottleneck block, post- or pre-activation (see Note [Block layout] in models/block.cpp).

    Post-activation: BN i after conv i, ReLU after the addition. Pre-activation: BN i + ReLU before conv i, the
    projection takes the pre-activated input, and the sum is returned without a ReLU."""

    def __init__(self, in_channels, planes, stride=1, bottleneck=False, preact=False, groups=1, base_width=64,
                 shortcut="projection", se_reduction=0, drop_path=0.0, dropout=0.0):
        super().__init__()
        self.in_channels, self.stride, self.preact, self.shortcut_kind = in_channels, stride, preact, shortcut
        self.drop_path, self.dropout = drop_path, dropout
        self.out_channels = planes * (4 if bottleneck else 1)
        if bottleneck:
            width = planes * base_width // 64 * groups
            ch, kernels, stride_at = [in_channels, width, width, self.out_channels], [1, 3, 1], 1
        else:
            if groups != 1 or base_width != 64:
                raise ValueError("basic blocks support only groups=1, base_width=64")
            ch, kernels, stride_at = [in_channels, planes, planes], [3, 3], 0
        self.depth = len(kernels)
        for i, k in enumerate(kernels):
            # Registered in torchvision's order: conv1, bn1, conv2, bn2, ...
            setattr(self, "conv%d" % (i + 1),
                    _conv(ch[i], ch[i + 1], k, stride if i == stride_at else 1, groups if k == 3 else 1))
            setattr(self, "bn%d" % (i + 1), nn.BatchNorm2d(ch[i] if preact else ch[i + 1]))
        self.se = SqueezeExcite(self.out_channels, se_reduction) if se_reduction > 0 else None
        self.shape_changes = stride != 1 or in_channels != self.out_channels
        self.downsample = None
        if shortcut == "projection" and self.shape_changes:
            layers = [_conv(in_channels, self.out_channels, 1, stride)]
            if not preact:
                layers.append(nn.BatchNorm2d(self.out_channels))
            self.downsample = nn.Sequential(*layers)
        if shortcut == "zeropad" and self.shape_changes and self.out_channels < in_channels:
            raise ValueError("zero-pad shortcut cannot reduce channels (%d -> %d)" % (in_channels, self.out_channels))

    def _shortcut(self, x, pre):
        if not self.shape_changes:
            return x
        if self.shortcut_kind == "projection":
            return self.downsample(pre if self.preact else x)
        # Option A: every stride-th pixel, new channels zero-padded (split before/after).
        sub = x[:, :, ::self.stride, ::self.stride]
        pad = self.out_channels - self.in_channels
        return F.pad(sub, (0, 0, 0, 0, pad // 2, pad - pad // 2))

    def forward(self, x):
        pre = x
        if self.preact:
            pre = F.relu(self.bn1(x))
            out = self.conv1(pre)
            for i in range(1, self.depth):
                out = F.relu(getattr(self, "bn%d" % (i + 1))(out))
                if i == 1 and self.dropout > 0.0:
                    out = F.dropout(out, self.dropout, self.training)
                out = getattr(self, "conv%d" % (i + 1))(out)
        else:
            out = x
            for i in range(self.depth):
                out = getattr(self, "bn%d" % (i + 1))(getattr(self, "conv%d" % (i + 1))(out))
                if i + 1 < self.depth:
                    out = F.relu(out)
                    if i == 0 and self.dropout > 0.0:
                        out = F.dropout(out, self.dropout, self.training)
        if self.se is not None:
            out = self.se(out)
        if self.shortcut_kind != "none":
            out = drop_path(out, self.drop_path, self.training) + self._shortcut(x, pre)
        return out if self.preact else F.relu(out)


# ---------------------------------------------------------------------------------------------------------------
# The network (models/resnet.cpp)
# ---------------------------------------------------------------------------------------------------------------


class ResNet(nn.Module):
    """One class for the whole family; `name` picks the architecture as `stride train --model NAME` does.

    Options are `stride train`'s: num_classes (default: the model's own), in_channels (1 for Fashion-MNIST),
    cifar_shortcut ("A" zero-pad or "B" projection; CIFAR models only), dropout (before the classifier),
    block_dropout (between a block's convolutions; Wide ResNet), drop_path (stochastic depth of the last block),
    zero_init_residual and he_mode ("fan_out" or "fan_in"), which only change the initialisation."""

    def __init__(self, name, num_classes=None, in_channels=3, cifar_shortcut=None, dropout=0.0, block_dropout=None,
                 drop_path=0.0, zero_init_residual=False, he_mode="fan_out"):
        super().__init__()
        spec = model_spec(name)
        if cifar_shortcut:
            if spec["stem"] != "cifar":
                raise ValueError("cifar_shortcut applies only to CIFAR-style models")
            if cifar_shortcut not in ("A", "B"):
                raise ValueError("cifar_shortcut must be A or B, got '%s'" % cifar_shortcut)
            if spec["shortcut"] != "none":
                spec["shortcut"] = "zeropad" if cifar_shortcut == "A" else "projection"
        if zero_init_residual and spec["shortcut"] == "none":
            raise ValueError("model '%s' is a plain network: zero_init_residual would zero its only signal path" % name)
        if num_classes:
            spec["num_classes"] = num_classes
        if block_dropout is not None and block_dropout >= 0.0:
            spec["block_dropout"] = block_dropout
        self.spec, self.name, self.in_channels = spec, name, in_channels
        self.num_classes, self.dropout = spec["num_classes"], dropout
        imagenet = spec["stem"] == "imagenet"
        self.conv1 = nn.Conv2d(in_channels, spec["stem_channels"], 7 if imagenet else 3, stride=2 if imagenet else 1,
                               padding=3 if imagenet else 1, bias=False)
        self.bn1 = None if spec["preact"] else nn.BatchNorm2d(spec["stem_channels"])
        total = sum(spec["blocks"])
        index, channels = 0, spec["stem_channels"]
        self.stages = []
        for s, (n, planes) in enumerate(zip(spec["blocks"], spec["planes"])):
            blocks = []
            for i in range(n):
                index += 1
                block = ResidualBlock(channels, planes, 2 if (s > 0 and i == 0) else 1, spec["bottleneck"],
                                      spec["preact"], spec["groups"], spec["base_width"], spec["shortcut"],
                                      spec["se_reduction"], drop_path * index / total, spec["block_dropout"])
                blocks.append(block)
                channels = block.out_channels
            stage = nn.Sequential(*blocks)
            setattr(self, "layer%d" % (s + 1), stage)
            self.stages.append("layer%d" % (s + 1))
        self.feature_dim = channels
        self.final_bn = nn.BatchNorm2d(channels) if spec["preact"] else None
        self.fc = nn.Linear(channels, self.num_classes)
        self._initialize(zero_init_residual, he_mode)

    def _initialize(self, zero_init_residual, he_mode):
        # Note [Initialisation] in models/resnet.cpp: He-normal convolutions, BN gamma 1 / beta 0, Linear's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode=he_mode, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    last = getattr(m, "%s%d" % ("conv" if m.preact else "bn", m.depth))
                    nn.init.zeros_(last.weight)

    def features(self, x):
        """Everything before the classifier: pooled features [N, feature_dim]."""
        x = self.conv1(x)
        if self.bn1 is not None:
            x = F.relu(self.bn1(x))
        if self.spec["stem"] == "imagenet":
            x = F.max_pool2d(x, 3, 2, 1)
        for stage in self.stages:
            x = getattr(self, stage)(x)
        if self.final_bn is not None:
            x = F.relu(self.final_bn(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x):
        x = self.features(x)
        if self.dropout > 0.0:
            x = F.dropout(x, self.dropout, self.training)
        return self.fc(x)


def build_model(name, **options):
    """A freshly initialised model; options as ResNet's."""
    return ResNet(name, **options)


def model_from_state_dict(name, state_dict, **options):
    """A model shaped by the weights (class count, input channels, CIFAR shortcut kind) with them loaded strictly."""
    spec = model_spec(name)
    options.setdefault("num_classes", int(state_dict["fc.weight"].shape[0]))
    options.setdefault("in_channels", int(state_dict["conv1.weight"].shape[1]))
    if spec["stem"] == "cifar" and spec["shortcut"] != "none" and "cifar_shortcut" not in options:
        options["cifar_shortcut"] = "B" if any(".downsample." in k for k in state_dict) else "A"
    model = ResNet(name, **options)
    model.load_state_dict(state_dict, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------------------
# safetensors without the safetensors package (trainer/safetensors.cpp writes them)
# ---------------------------------------------------------------------------------------------------------------

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}


def load_safetensors(path):
    """(tensors, metadata) of a .safetensors file: an 8-byte little-endian header length, a JSON header
    {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then the raw little-endian data."""
    if sys.byteorder != "little":
        raise RuntimeError("%s: safetensors data is little-endian; this reader supports little-endian hosts" % path)
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    if len(raw) < 8:
        raise ValueError("%s: not a safetensors file (%d bytes)" % (path, len(raw)))
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError("%s: header of %d bytes in a %d-byte file (truncated?)" % (path, n, len(raw)))
    header = json.loads(bytes(raw[8:8 + n]).decode("utf-8"))
    metadata = header.pop("__metadata__", {}) or {}
    base, tensors = 8 + n, {}
    for name, e in header.items():
        dtype = _DTYPES.get(e["dtype"])
        if dtype is None:
            raise ValueError("%s: tensor '%s' has unsupported dtype %s" % (path, name, e["dtype"]))
        begin, end = e["data_offsets"]
        shape = list(e["shape"])
        count = 1
        for d in shape:
            count *= d
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != count * itemsize or base + end > len(raw):
            raise ValueError("%s: tensor '%s' has %d bytes for shape %s (%s)" % (path, name, end - begin, shape,
                                                                                 e["dtype"]))
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            flat = torch.frombuffer(raw, dtype=dtype, count=count, offset=base + begin)
            tensors[name] = flat.clone().reshape(shape)
    return tensors, metadata


def save_safetensors(path, tensors, metadata=None):
    """Writes tensors (a dict of name -> tensor) in the format load_safetensors and Stride read."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        flat = t.reshape(-1)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints (trainer/checkpoint.h): step-XXXXXXXX/{model,optimizer,ema,state}.safetensors + MANIFEST
# ---------------------------------------------------------------------------------------------------------------

_MANIFEST_MAGIC = b"STRCKP1\n"


def _varint(buf, i):
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _proto_fields(buf):
    """(field number, value) of a protobuf message's top-level fields: ints for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("unsupported protobuf wire type %d" % wire)
        yield field, value


def read_manifest(checkpoint_dir):
    """The parts of a checkpoint's MANIFEST (proto/checkpoint.proto) a reader of the weights needs:
    {"model", "step", "files": {name: size}}. Its framing is storage/framing.h: magic, CRC32C, length, payload.
    `stride ckpt verify` checks the checksums; this checks the framing and the listed file sizes."""
    path = os.path.join(checkpoint_dir, "MANIFEST")
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 20 or raw[:8] != _MANIFEST_MAGIC:
        raise ValueError("%s: not a Stride MANIFEST" % path)
    (n,) = struct.unpack("<Q", raw[12:20])
    if n != len(raw) - 20:
        raise ValueError("%s: truncated (%d of %d bytes)" % (path, len(raw) - 20, n))
    out = {"model": "", "step": 0, "files": {}}
    for field, value in _proto_fields(raw[20:]):
        if field == 8:
            out["model"] = value.decode("utf-8")
        elif field == 2:
            out["step"] = value
        elif field == 5:
            entry = dict(_proto_fields(value))
            out["files"][entry.get(1, b"").decode("utf-8")] = entry.get(2, 0)
    for name, size in out["files"].items():
        p = os.path.join(checkpoint_dir, name)
        if not os.path.exists(p) or os.path.getsize(p) != size:
            raise ValueError("%s: missing or not %d bytes as MANIFEST says" % (p, size))
    return out


def load_checkpoint(path):
    """The weights of a checkpoint directory (one holding a MANIFEST) or of a file `stride ckpt export` wrote:
    {"model": name, "step": int or None, "state_dict": {...}, "ema_state_dict": {...} or None}.

    A checkpoint directory's model.safetensors holds the trained weights and ema.safetensors, when the run used
    --model-ema, the EMA weights (same keys). An exported file holds one of the two and names the model in its
    metadata. For a run directory, pick the checkpoint with `stride ckpt export RUN -o FILE`, which follows the
    run's lineage."""
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "MANIFEST")):
            hint = " (a run directory: pass checkpoints/step-XXXXXXXX or `stride ckpt export` it)" \
                if os.path.isdir(os.path.join(path, "checkpoints")) else ""
            raise ValueError("%s: no MANIFEST, not a checkpoint directory%s" % (path, hint))
        manifest = read_manifest(path)
        state_dict, _ = load_safetensors(os.path.join(path, "model.safetensors"))
        ema = None
        if "ema.safetensors" in manifest["files"]:
            ema, _ = load_safetensors(os.path.join(path, "ema.safetensors"))
        return {"model": manifest["model"], "step": manifest["step"], "state_dict": state_dict, "ema_state_dict": ema}
    state_dict, metadata = load_safetensors(path)
    step = metadata.get("step")
    return {"model": metadata.get("model", ""), "step": int(step) if step is not None else None,
            "state_dict": state_dict, "ema_state_dict": None}


def load_model(path, ema=False, name=None, **options):
    """The model of a checkpoint (see load_checkpoint), weights loaded strictly, in eval mode. `ema` takes the EMA
    weights of a checkpoint directory; `name` overrides the model name (needed for files without metadata)."""
    ckpt = load_checkpoint(path)
    name = name or ckpt["model"]
    if not name:
        raise ValueError("%s does not name its model; pass name=" % path)
    weights = ckpt["state_dict"]
    if ema:
        if ckpt["ema_state_dict"] is None:
            raise ValueError("%s has no EMA weights" % path)
        weights = ckpt["ema_state_dict"]
    return model_from_state_dict(name, weights, **options).eval()
