"""Writes a WebDataset the way third-party tools do, with no Stride code involved.

Python's tarfile writes ustar tars of `<key>.<image>` + `<key>.cls` members; numpy writes the .npy members and PIL
the PNG/JPEG ones. The images are the first N training and M test images of Fashion-MNIST (IDX files, gzip or
plain). The same subset is also written as IDX files, so `stride shard --format fashion-mnist` can shard exactly
the same samples for comparison.

usage: make_webdataset.py IDX_DIR OUT_DIR --train N --test M [--per-shard K] [--format npy|png|jpg|mixed-size]
  OUT_DIR/train/*.tar, OUT_DIR/test/*.tar   the WebDataset
  OUT_DIR/idx/                               the same samples as IDX files
"""
import argparse
import gzip
import io
import os
import tarfile

import numpy as np
from PIL import Image


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(idx_dir, stem):
    for name in (stem + ".gz", stem):
        if os.path.exists(os.path.join(idx_dir, name)):
            return os.path.join(idx_dir, name)
    raise SystemExit("missing " + stem + " in " + idx_dir)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def encode(image, fmt, index):
    if fmt == "mixed-size" and index % 2 == 1:  # every other image one pixel wider and taller
        image = np.pad(image, ((0, 1), (0, 1)))
        fmt = "npy"
    if fmt in ("npy", "mixed-size"):
        buf = io.BytesIO()
        np.save(buf, image[:, :, None])  # HxWx1 uint8, numpy's own header
        return "npy", buf.getvalue()
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image, mode="L").save(buf, format="PNG")
        return "png", buf.getvalue()
    Image.fromarray(image, mode="L").save(buf, format="JPEG", quality=95)
    return "jpg", buf.getvalue()


def add_member(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(payload))


def write_split(out_dir, images, labels, per_shard, fmt):
    os.makedirs(out_dir, exist_ok=True)
    for start in range(0, len(images), per_shard):
        path = os.path.join(out_dir, "part-%05d.tar" % (start // per_shard))
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(start + per_shard, len(images))):
                key = "sample%06d" % i
                ext, payload = encode(images[i], fmt, i)
                add_member(tar, key + "." + ext, payload)
                add_member(tar, key + ".cls", str(int(labels[i])).encode())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("idx_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=int, required=True)
    ap.add_argument("--test", type=int, required=True)
    ap.add_argument("--per-shard", type=int, default=512)
    ap.add_argument("--format", default="npy", choices=["npy", "png", "jpg", "mixed-size"])
    a = ap.parse_args()
    os.makedirs(os.path.join(a.out_dir, "idx"), exist_ok=True)
    for split, prefix, n in (("train", "train", a.train), ("test", "t10k", a.test)):
        images = read_idx(find(a.idx_dir, prefix + "-images-idx3-ubyte"))[:n]
        labels = read_idx(find(a.idx_dir, prefix + "-labels-idx1-ubyte"))[:n]
        write_split(os.path.join(a.out_dir, split), images, labels, a.per_shard, a.format)
        write_idx(os.path.join(a.out_dir, "idx", prefix + "-images-idx3-ubyte"), images)
        write_idx(os.path.join(a.out_dir, "idx", prefix + "-labels-idx1-ubyte"), labels)


if __name__ == "__main__":
    main()
