"""Checks and runs an ONNX file that python/export.py wrote, with Debian's python3-onnx and torch only.

Debian 12 has the `onnx` package (1.12: checker, shape inference) but no onnxruntime and no onnx.reference, so
this module validates the file with onnx.checker, checks the graph's inputs and outputs, and evaluates the graph
node by node with torch functions for the operators Stride's models export to. An operator outside that set is an
error naming it, never a silent pass.
"""
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads2d(pads):
    # ONNX: [top, left, bottom, right]; F.pad: (left, right, top, bottom).
    return (pads[1], pads[3], pads[0], pads[2])


def _conv(x, w, b=None, group=1, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), **_):
    if pads[0] != pads[2] or pads[1] != pads[3]:
        x, pads = F.pad(x, _pads2d(pads)), (0, 0, 0, 0)
    return F.conv2d(x, w, b, tuple(strides), (pads[0], pads[1]), tuple(dilations), group)


def _maxpool(x, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0), ceil_mode=0, **_):
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise ValueError("MaxPool with asymmetric pads %s" % list(pads))
    return F.max_pool2d(x, tuple(kernel_shape), tuple(strides), (pads[0], pads[1]), ceil_mode=bool(ceil_mode))


def _gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0, **_):
    a = a.t() if transA else a
    b = b.t() if transB else b
    y = alpha * (a @ b)
    return y + beta * c if c is not None else y


def _batchnorm(x, scale, bias, mean, var, epsilon=1e-5, **_):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)


def _slice(x, starts, ends, axes=None, steps=None):
    axes = axes.tolist() if axes is not None else list(range(len(starts)))
    steps = steps.tolist() if steps is not None else [1] * len(starts)
    for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes, steps):
        n = x.shape[a]
        s, e = s + n if s < 0 else s, e + n if e < 0 else e
        if st > 0:
            s, e = max(0, min(n, s)), max(0, min(n, e))
        elif st < 0:  # counts down from start to just above end; end -1 means "through index 0"
            s, e = max(-1, min(n - 1, s)), max(-1, min(n - 1, e))
        else:
            raise ValueError("Slice with step 0")
        x = x.index_select(a, torch.arange(s, e, st, dtype=torch.long))
    return x


def _pad(x, pads, value=None, mode="constant", **_):
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode != "constant":
        raise ValueError("Pad mode %s" % mode)
    p = pads.tolist()
    half = len(p) // 2
    torch_pads = []
    for axis in reversed(range(half)):  # F.pad lists the last dimension first
        torch_pads += [p[axis], p[axis + half]]
    return F.pad(x, torch_pads, value=float(value) if value is not None and value.numel() else 0.0)


def _reduce_mean(x, axes=None, keepdims=1, **_):
    return x.mean(dim=tuple(axes) if axes is not None else tuple(range(x.dim())), keepdim=bool(keepdims))


# ONNX TensorProto data types (onnx.proto) that shape computations use.
_ONNX_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64}


def _reshape(x, shape):
    shape = shape.tolist()
    shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]  # 0: copy the input's dimension
    return x.reshape(shape)


def _constant_of_shape(shape, value=None, **_):
    v = _constant(value) if value is not None else torch.zeros(1)
    return torch.full(shape.tolist(), v.reshape(-1)[0].item(), dtype=v.dtype)


def _constant(value=None, **_):
    return torch.from_numpy(numpy_helper.to_array(value).copy())


OPS = {
    "Conv": lambda i, a: _conv(*i, **a),
    "BatchNormalization": lambda i, a: _batchnorm(*i, **a),
    "Relu": lambda i, a: F.relu(i[0]),
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
    "Add": lambda i, a: i[0] + i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "MaxPool": lambda i, a: _maxpool(i[0], **a),
    "GlobalAveragePool": lambda i, a: i[0].mean(dim=(2, 3), keepdim=True),
    "ReduceMean": lambda i, a: _reduce_mean(i[0], **a),
    "Flatten": lambda i, a: torch.flatten(i[0], a.get("axis", 1)),
    "Gemm": lambda i, a: _gemm(*i, **a),
    "Slice": lambda i, a: _slice(*i),
    "Pad": lambda i, a: _pad(*i, **a),
    "Constant": lambda i, a: _constant(**a),
    "Identity": lambda i, a: i[0],
    # Shape arithmetic, e.g. the pads of a zero-pad shortcut.
    "Cast": lambda i, a: i[0].to(_ONNX_DTYPES[a["to"]]),
    "Concat": lambda i, a: torch.cat(i, a["axis"]),
    "Reshape": lambda i, a: _reshape(i[0], i[1]),
    "Transpose": lambda i, a: i[0].permute(a["perm"]) if "perm" in a else i[0].permute(
        list(reversed(range(i[0].dim())))),
    "ConstantOfShape": lambda i, a: _constant_of_shape(i[0], **a),
}


def check(path, in_channels=None):
    """Loads and validates the file; returns the model. Checks one float input [batch, C, H, W] named `input` with
    a symbolic batch dimension and one output `logits`."""
    model = onnx.load(path)
    onnx.checker.check_model(model)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if [i.name for i in inputs] != ["input"] or [o.name for o in model.graph.output] != ["logits"]:
        raise ValueError("%s: inputs %s, outputs %s; want ['input'], ['logits']" % (
            path, [i.name for i in inputs], [o.name for o in model.graph.output]))
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[0].dim_param:
        raise ValueError("%s: input should be [batch, C, H, W] with a symbolic batch, got %s" % (path, dims))
    if in_channels is not None and dims[1].dim_value != in_channels:
        raise ValueError("%s: input has %d channels, want %d" % (path, dims[1].dim_value, in_channels))
    return model


def run(path, x):
    """Evaluates the ONNX graph at `path` on x with torch; returns the `logits` output."""
    model = check(path, x.shape[1])
    values = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    values["input"] = x
    for node in model.graph.node:
        op = OPS.get(node.op_type)
        if op is None:
            raise ValueError("%s: operator %s (node %s) is not in onnx_eval's set" % (path, node.op_type, node.name))
        ins = [values[n] if n else None for n in node.input]
        while ins and ins[-1] is None:
            ins.pop()
        out = op(ins, _attrs(node))
        values[node.output[0]] = out
    return values["logits"]
