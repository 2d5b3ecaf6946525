"""safetensors load/save for the reference scripts: python/stride_models.py's torch-only reader and writer (the
`safetensors` package is not in Debian 12), under the names the scripts already use."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "python"))
from stride_models import load_safetensors, save_safetensors  # noqa: E402


def save(path, tensors, metadata=None):
    save_safetensors(path, tensors, metadata)


def load(path):
    return load_safetensors(path)[0]
