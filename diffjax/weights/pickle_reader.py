"""PyTorch pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) read without torch, safely.

A pickle is a program: unpickling a file calls whatever functions it names, so a `.ckpt`
from the internet can run arbitrary code (a `__reduce__` returning `os.system`). These files
are therefore refused unless the caller passes `allow_pickle=True` (`--allow-pickle`), and
even then they are read by a restricted unpickler that resolves only the names a tensor
checkpoint needs, each to OUR OWN inert replacement (never the named function itself):
torch's tensor/parameter rebuilders and storage types, `collections.OrderedDict`, numpy
scalars and dtypes, and PyTorch Lightning's `ModelCheckpoint` callback state (as a plain
record). Any other global is refused with its name before anything is called.

torch's zip format (torch >= 1.6): `<name>/data.pkl` is the pickled object; each tensor's
storage is the zip entry `<name>/data/<key>`, referenced through pickle's persistent ids
`('storage', <StorageType>, key, location, numel)`. The legacy pre-1.6 format is refused.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np

from diffjax.weights.io import WeightsError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class PickleRefused(WeightsError):
    """A pickle file was not read: pickles are off, or it names a global we do not allow."""


def _bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bf16", "IntStorage": np.int32, "LongStorage": np.int64,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        dtype = _STORAGE_DTYPES[name]
        self.dtype = _bf16() if dtype == "bf16" else np.dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2 (storage, offset, size, stride, ...) as numpy."""
    flat = storage
    if not size:
        return flat[offset].copy()
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, *_):
    return data


class _Record:
    """An inert stand-in for an allowed non-tensor object (its state kept as data)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else None


def _numpy_dtype(name, *_):
    return np.dtype(name)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): tuple,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"): _Record,
    ("lightning.pytorch.callbacks.model_checkpoint", "ModelCheckpoint"): _Record,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, zf: zipfile.ZipFile | None, root: str, path: str):
        super().__init__(file)
        self._zf, self._root, self._path = zf, root, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise PickleRefused(
            f"{self._path}: refused to unpickle global {module}.{name}: only tensors, "
            "storages and plain containers are read from pickle files (a pickle can run "
            "code; this one names something else)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and self._zf):
            raise PickleRefused(f"{self._path}: unsupported persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise PickleRefused(f"{self._path}: storage of unknown type {storage_type!r:.80}")
        if key not in self._storages:
            raw = self._zf.read(f"{self._root}/data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self._storages[key]


def _flatten_state_dict(obj, path: str) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: the pickle holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}


def load_pickle_state_dict(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """A torch zip-format pickle's state dict as numpy arrays, with no torch and no code
    run; refused (PickleRefused, saying why and how to convert) unless `allow_pickle`."""
    from diffjax.weights.io import check_finite
    sd = _flatten_state_dict(load_pickle(path, allow_pickle), os.fspath(path))
    check_finite({k: v for k, v in sd.items() if v.dtype.kind == "f"}, os.fspath(path))
    return sd


def load_pickle(path: str, allow_pickle: bool = False):
    """The object a torch zip-format pickle holds (dicts, lists, numbers, strings; tensors
    as numpy arrays), read by the restricted unpickler; refused unless `allow_pickle`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if not allow_pickle:
        raise PickleRefused(
            f"{path} is a pickle-based PyTorch file: loading a pickle can run arbitrary code, "
            "so diffjax refuses it by default. Convert it to .safetensors (e.g. `diffjax "
            "convert FILE OUT --allow-pickle --to single-file`, or safetensors' own "
            "converter), or pass --allow-pickle to read it with diffjax's restricted "
            "unpickler (tensors only)")
    if not zipfile.is_zipfile(path):
        raise PickleRefused(f"{path}: not a torch zip-format checkpoint (torch >= 1.6); the "
                            "legacy pickle format is not read. Re-save it with a current "
                            "torch or convert it to .safetensors")
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise PickleRefused(f"{path}: zip file without exactly one <name>/data.pkl")
        root = pkl[0].split("/")[0]
        byteorder = f"{root}/byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
            raise WeightsError(f"{path}: big-endian checkpoints are not supported")
        return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), zf, root, path).load()
