"""Pickle checkpoints: refused by default, read tensors-only with --allow-pickle, no torch.

A pickle can run code: the malicious file here pickles an object whose `__reduce__` returns
`os.system` with a command that creates a marker file; it must be refused with and without
allow_pickle and the marker must never appear. A benign `.ckpt` written by `torch.save`
(LDM layout, with the `state_dict`/`global_step` wrapper training code writes) loads with
allow_pickle in a subprocess where importing torch fails, to exactly torch's own values.
"""

import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

try:  # dev extra: writing the benign file needs torch
    import torch
except ModuleNotFoundError:
    torch = None

from diffjax.weights.pickle_reader import PickleRefused, load_pickle_state_dict


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_zip(path, obj_bytes):
    """A file in torch's zip layout whose data.pkl is `obj_bytes`."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", obj_bytes)
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/byteorder", "little")


@pytest.mark.parametrize("layout", ["torch-zip", "raw-pickle"])
@pytest.mark.parametrize("allow", [False, True])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, layout, allow):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": {"w": _Evil(str(marker))}})
    path = tmp_path / "model.ckpt"
    if layout == "torch-zip":
        _torch_zip(path, payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(PickleRefused) as e:
        load_pickle_state_dict(str(path), allow_pickle=allow)
    if allow and layout == "torch-zip":
        assert "system" in str(e.value) and "refused to unpickle global" in str(e.value)
    elif not allow:
        assert "arbitrary code" in str(e.value) and ".safetensors" in str(e.value) \
            and "--allow-pickle" in str(e.value)
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path):
    class _Eval:
        def __reduce__(self):
            return (eval, ("1 + 1",))
    path = tmp_path / "eval.pt"
    _torch_zip(path, pickle.dumps(_Eval()))
    with pytest.raises(PickleRefused, match="builtins.eval"):
        load_pickle_state_dict(str(path), allow_pickle=True)


_CHILD = r"""
import sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
import numpy as np
from diffjax.weights import single_file as sf
sd, _ = sf.read_file(sys.argv[1], allow_pickle=True)   # the path `load` takes for a .ckpt
np.savez(sys.argv[2], **sd)
f = sf.split_single_file(sd)
assert sys.modules["torch"] is None
print("kind", f.kind, sorted(f.unet)[0])
"""


@pytest.mark.parity
def test_benign_ckpt_loads_without_torch(tmp_path):
    from diffjax.weights import single_file as sf
    from diffjax.weights.components import preset_components
    ldm, _ = sf.components_to_ldm(preset_components("tiny"))
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ldm.items()}
    sd["model.diffusion_model.out.2.bias"] = torch.randn(4)
    sd["first_stage_model.quant_conv.weight"] = \
        sd["first_stage_model.quant_conv.weight"].transpose(0, 1).contiguous().transpose(0, 1)
    sd["alphas_cumprod"] = torch.linspace(1, 0, 5, dtype=torch.float64)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": sd, "global_step": 7, "epoch": 1}, path)
    with pytest.raises(PickleRefused, match="arbitrary code"):
        from diffjax.weights.load import load
        load(str(path))
    out = tmp_path / "read.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(out)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "kind sd1 conv_in.bias" in r.stdout
    read = dict(np.load(out))
    assert set(read) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(read[k], v.numpy())
        assert read[k].dtype == v.numpy().dtype


def test_missing_file_and_legacy_format(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pickle_state_dict(str(tmp_path / "nope.ckpt"), allow_pickle=True)
    legacy = tmp_path / "legacy.pt"
    buf = io.BytesIO()
    pickle.dump({"w": [1, 2]}, buf)
    legacy.write_bytes(buf.getvalue())
    with pytest.raises(PickleRefused, match="legacy"):
        load_pickle_state_dict(str(legacy), allow_pickle=True)
