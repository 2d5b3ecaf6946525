"""torchvision 0.14's auto-augment ops and magnitude tables, the reference for tests/unit/auto_augment_test.cpp.

  autoaugment_reference.py ops IN.raw H W C OUT_DIR NAME:MAGNITUDE ...
      applies torchvision.transforms.autoaugment._apply_op (bilinear, fill None: the train.py recipe's settings) to
      the H x W x C uint8 image in IN.raw (a PIL image, as the recipe loads them) once per NAME:MAGNITUDE and
      writes the i-th result to OUT_DIR/i.raw
  autoaugment_reference.py tables H W
      prints "POLICY OP BIN VALUE" for every magnitude of RandAugment (31 bins), TrivialAugmentWide (31 bins) and
      AutoAugment (10 bins) for an H x W image
"""
import os
import sys

import numpy as np
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as aa


def ops(args):
    path, h, w, c, out_dir = args[0], int(args[1]), int(args[2]), int(args[3]), args[4]
    pixels = np.fromfile(path, dtype=np.uint8).reshape(h, w, c)
    img = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, "L" if c == 1 else "RGB")
    for i, spec in enumerate(args[5:]):
        name, magnitude = spec.split(":")
        out = aa._apply_op(img, name, float(magnitude), interpolation=InterpolationMode.BILINEAR, fill=None)
        np.asarray(out, dtype=np.uint8).tofile(os.path.join(out_dir, f"{i}.raw"))


def tables(args):
    h, w = int(args[0]), int(args[1])
    spaces = {
        "ra": aa.RandAugment()._augmentation_space(31, (h, w)),
        "ta_wide": aa.TrivialAugmentWide()._augmentation_space(31),
        "imagenet": aa.AutoAugment()._augmentation_space(10, (h, w)),
    }
    for policy, space in spaces.items():
        for op, (magnitudes, _signed) in space.items():
            if magnitudes.ndim == 0:
                continue
            for b in range(len(magnitudes)):
                print(policy, op, b, repr(float(magnitudes[b].item())))


if __name__ == "__main__":
    {"ops": ops, "tables": tables}[sys.argv[1]](sys.argv[2:])
