"""PIL's bilinear resize of a greyscale image, the reference for data_loader_test (Transforms.*).

  pil_resize.py W H X0 Y0 X1 Y1 OUT_W OUT_H P0 P1 ... (W*H pixel values, row-major)
prints the OUT_W*OUT_H result pixels of Image.resize((OUT_W, OUT_H), BILINEAR, box=(X0, Y0, X1, Y1)).
"""
import sys

from PIL import Image

w, h = int(sys.argv[1]), int(sys.argv[2])
box = tuple(float(v) for v in sys.argv[3:7])
out_w, out_h = int(sys.argv[7]), int(sys.argv[8])
pixels = bytes(int(v) for v in sys.argv[9:])
assert len(pixels) == w * h, "need W*H pixel values"
img = Image.frombytes("L", (w, h), pixels)
print(" ".join(str(v) for v in img.resize((out_w, out_h), Image.BILINEAR, box=box).tobytes()))
