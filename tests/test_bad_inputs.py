"""The catalogue of bad inputs: every command, each mistake a user can make, one line.

Each case runs `diffjax.cli.main(argv)` in this process (no subprocess: most fail before
any model is loaded or anything compiled, in milliseconds) and asserts exit status 2, the
message's key words on one line of stderr, no traceback, and that no earlier output
changed: a finished job's folder (its files' bytes), a built dataset and every fixture file
(their sizes and mtimes) hash the same before and after.

The few cases that must reach the loader (a model folder that is empty, truncated,
corrupted, NaN-filled or mis-shaped) read a tiny diffusers folder written once per module.
"""

import hashlib
import json
import os
import shutil
import struct

import numpy as np
import pytest

from diffjax import cli

pytestmark = pytest.mark.filterwarnings("ignore")

# argv with {ws} = the workspace; key words expected (lower case) in the one-line message.
SAMPLE = ["sample", "--prompt", "a red circle", "--out", "{ws}/new", "--model", "tiny",
          "--config.compilation_cache="]


def s(*extra):
    return [*SAMPLE, *extra]


CASES = {
    # -- numbers: non-finite, out of range, unparsable ------------------------------------
    "guidance_nan": (s("--config.guidance_scale=nan"), ["guidance_scale", "finite"]),
    "guidance_inf": (s("--config.guidance_scale=inf"), ["guidance_scale", "finite"]),
    "guidance_negative": (s("--config.guidance_scale=-1"), ["guidance_scale", ">= 0"]),
    "rescale_above_one": (s("--config.guidance_rescale=2"), ["guidance_rescale", "<= 1"]),
    "eta_option_nan": (s("--config.sampler.name=euler_ancestral",
                         "--config.sampler.options.eta=nan"), ["eta", "nan"]),
    "legacy_eta_nan": (["sample", "--config", "{ws}/legacy_eta_nan.json"], ["eta", "nan"]),
    "steps_zero": (s("--config.sampler.steps=0"), ["sampler.steps", ">= 1"]),
    "steps_text": (s("--config.sampler.steps=abc"), ["sampler.steps", "cannot parse"]),
    "batch_zero": (s("--config.batch_size=0"), ["batch_size", ">= 1"]),
    "height_negative": (s("--config.height=-8"), ["height", ">= 0"]),
    "clip_skip": (s("--config.clip_skip=-5"), ["clip_skip", ">= -1"]),
    "huge_size": (s("--config.height=100000", "--config.width=100000"),
                  ["100000x100000", "gib", "memory"]),
    "strength_nan": (s("--init-image", "{ws}/init.png", "--strength", "nan"),
                     ["strength", "nan"]),
    "strength_two": (s("--init-image", "{ws}/init.png", "--strength", "2"), ["strength", "[0, 1]"]),
    # -- names: sampler, schedule, dtype, keys ----------------------------------------------
    "schedule_bogus": (s("--config.sampler.schedule=bogus"), ["schedule", "bogus", "karras"]),
    "sampler_bogus": (s("--config.sampler.name=bogus"), ["sampler.name", "bogus", "euler"]),
    "sampler_option_unknown": (s("--config.sampler.name=euler",
                                 "--config.sampler.options.bogus=1"), ["bogus", "option"]),
    "dtype_bogus": (s("--config.dtype=float64"), ["dtype", "float32"]),
    "key_typo": (s("--config.stesp=3"), ["unknown config key", "stesp"]),
    "key_is_group": (s("--config.sampler=3"), ["sampler", "group"]),
    "override_without_value": (s("--config.guidance_scale"), ["needs a value"]),
    "config_arg_typo": (["sample", "--config", "diffjax.configs.sample:stesp=3", "--prompt",
                         "x", "--out", "{ws}/new"], ["stesp", "config argument"]),
    # -- the mesh and the devices -----------------------------------------------------------
    "mesh_too_big": (s("--config.mesh.shape=(3,1,1)"), ["mesh shape", "devices"]),
    "mesh_two_minus_one": (s("--config.mesh.shape=(-1,-1,1)"), ["mesh shape", "-1"]),
    "batch_not_split": (s("--config.mesh.shape=(4,2,1)", "--config.batch_size=6"),
                        ["batch_size 6", "multiple of 8"]),
    "process_id_range": (s("--config.distributed.coordinator=127.0.0.1:1",
                           "--config.distributed.num_processes=2",
                           "--config.distributed.process_id=5"), ["process_id 5"]),
    # -- seeds and prompts ------------------------------------------------------------------
    "seeds_empty_range": (s("--seeds", "5:2"), ["seed range", "empty"]),
    "seeds_text": (s("--seeds", "abc"), ["seeds", "start:stop"]),
    "seeds_negative": (s("--seeds=-1"), ["seeds", "2**32"]),
    "seeds_too_big": (s("--seeds", "0:99999999999"), ["seeds", "2**32"]),
    "no_prompt": (["sample", "--out", "{ws}/new"], ["exactly one", "--prompt"]),
    "prompt_and_file": (s("--prompt-file", "{ws}/prompts.txt"), ["exactly one"]),
    "prompt_file_missing": (["sample", "--prompt-file", "{ws}/nope.txt", "--out", "{ws}/new"],
                            ["prompt file", "does not exist"]),
    "prompt_file_not_utf8": (["sample", "--prompt-file", "{ws}/latin1.txt", "--out",
                              "{ws}/new"], ["latin1.txt:2", "utf-8"]),
    "prompt_file_empty": (["sample", "--prompt-file", "{ws}/empty.txt", "--out", "{ws}/new"],
                          ["no prompts"]),
    "prompt_file_dir": (["sample", "--prompt-file", "{ws}/prev", "--out", "{ws}/new"],
                        ["prompt file", "directory"]),
    "jsonl_bad_json": (["sample", "--prompt-file", "{ws}/bad.jsonl", "--out", "{ws}/new"],
                       ["bad.jsonl:2", "not valid json"]),
    "jsonl_unknown_field": (["sample", "--prompt-file", "{ws}/field.jsonl", "--out",
                             "{ws}/new"], ["field.jsonl:1", "sede"]),
    # -- the output folder ----------------------------------------------------------------
    "out_missing": (["sample", "--prompt", "x"], ["--out", "required"]),
    "out_is_file": (s("--out", "{ws}/prompts.txt"), ["prompts.txt", "is a file"]),
    "out_under_file": (s("--out", "{ws}/prompts.txt/sub"), ["prompts.txt", "file"]),
    "out_not_writable": (s("--out", "/proc/diffjax-out"), ["/proc", "not writable"]),
    "out_other_job": (s("--out", "{ws}/prev", "--config.sampler.steps=3"),
                      ["holds another job", "sampler"]),
    "out_config_corrupt": (s("--out", "{ws}/corrupt_job"), ["config.json", "not valid json"]),
    # -- config files -------------------------------------------------------------------------
    "config_missing_py": (["sample", "--config", "{ws}/nope.py"], ["nope.py", "does not exist"]),
    "config_syntax_error": (["sample", "--config", "{ws}/syntax.py"],
                            ["syntax.py", "line 2", "syntax error"]),
    "config_raises": (["sample", "--config", "{ws}/raises.py"], ["raises.py", "nameerror"]),
    "config_no_get_config": (["sample", "--config", "{ws}/noget.py"], ["get_config"]),
    "config_empty_json": (["sample", "--config", "{ws}/empty.json"], ["empty.json", "empty"]),
    "config_list_json": (["sample", "--config", "{ws}/list.json"], ["list.json", "json object"]),
    "config_truncated_json": (["sample", "--config", "{ws}/trunc.json"],
                              ["trunc.json", "not valid json"]),
    "config_module_missing": (["sample", "--config", "diffjax.configs.nope"],
                              ["diffjax.configs.nope", "does not exist"]),
    "config_bad_spec": (["sample", "--config", "not a config"], ["not a config", "expected"]),
    # -- image conditioning -----------------------------------------------------------------
    "mask_without_image": (s("--mask", "{ws}/init.png"), ["--init-image"]),
    "init_image_missing": (s("--init-image", "{ws}/nope.png"), ["init image", "does not exist"]),
    "init_image_not_image": (s("--init-image", "{ws}/prompts.txt"), ["init image", "not an image"]),
    "init_image_truncated": (s("--init-image", "{ws}/cut.png"), ["init image", "truncated"]),
    # -- models (these reach the loader; nothing compiles) ----------------------------------
    "model_missing": (s("--model", "{ws}/no_model"), ["no_model", "neither", "preset"]),
    "model_empty_folder": (s("--model", "{ws}/empty_model"),
                           ["empty_model", "model_index.json"]),
    "model_truncated": (s("--model", "{ws}/m_truncated"), ["truncated or corrupted"]),
    "model_random_bytes": (s("--model", "{ws}/m_random"), ["nan or inf"]),
    "model_nan": (s("--model", "{ws}/m_nan"), ["nan or inf"]),
    "model_wrong_shape": (s("--model", "{ws}/m_shape"), ["does not match", "mis-shaped"]),
    "checkpoint_nan": (s("--model", "{ws}/ckpt_nan"), ["unet_params", "nan or inf"]),
    "model_no_config": (s("--model", "{ws}/m_noconfig"), ["unet", "no config.json"]),
    # -- train ------------------------------------------------------------------------------
    "train_no_dataset": (["train", "--config", "diffjax.configs.train.unet", "--workdir",
                          "{ws}/run"], ["dataset", "empty"]),
    "train_dataset_missing": (["train", "--config", "diffjax.configs.train.unet:dataset="
                               "{ws}/no_data", "--workdir", "{ws}/run"],
                              ["no_data", "does not exist", "diffjax data"]),
    "train_dataset_not_built": (["train", "--config", "diffjax.configs.train.unet:dataset="
                                 "{ws}/prev", "--workdir", "{ws}/run"],
                                ["not a built dataset"]),
    "train_workdir_file": (["train", "--config", "diffjax.configs.train.unet", "--workdir",
                            "{ws}/prompts.txt"], ["--workdir", "is a file"]),
    "train_trainer_bogus": (["train", "--config", "diffjax.configs.train.unet",
                             "--config.trainer=gan", "--workdir", "{ws}/run"], ["trainer"]),
    "train_lr_nan": (["train", "--config", "diffjax.configs.train.unet",
                      "--config.optimizer.learning_rate=nan", "--workdir", "{ws}/run"],
                     ["learning_rate", "finite"]),
    # -- data -------------------------------------------------------------------------------
    "data_resolution_negative": (["data", "shapes", "--out", "{ws}/data", "--resolution",
                                  "-32"], ["resolution", ">= 16", "-32"]),
    "data_resolution_7": (["data", "shapes", "--out", "{ws}/data", "--resolution", "7"],
                          ["resolution", ">= 16"]),
    "data_resolution_text": (["data", "shapes", "--out", "{ws}/data", "--resolution", "abc"],
                             ["--resolution", "invalid int"]),
    "data_negative_split": (["data", "shapes", "--out", "{ws}/data", "--train", "-1"],
                            ["split sizes", ">= 0"]),
    "data_all_empty": (["data", "shapes", "--out", "{ws}/data", "--train", "0", "--test", "0",
                        "--holdout", "0"], ["at least one"]),
    "data_out_file": (["data", "shapes", "--out", "{ws}/prompts.txt"], ["is a file"]),
    "data_folder_missing": (["data", "image_folder", "{ws}/no_images", "--out", "{ws}/data"],
                            ["image folder", "does not exist"]),
    "data_folder_is_file": (["data", "image_folder", "{ws}/prompts.txt", "--out", "{ws}/data"],
                            ["image folder", "is a file"]),
    # -- convert, bench, compare, info, the CLI itself ------------------------------------
    "convert_missing_source": (["convert", "{ws}/no_model", "{ws}/converted"],
                               ["no_model", "neither"]),
    "convert_dest_exists": (["convert", "tiny", "{ws}/prev"], ["already exists", "--force"]),
    "bench_key_typo": (["bench", "--out", "{ws}/bench", "--config.stesp=1"],
                       ["unknown config key"]),
    "bench_out_file": (["bench", "--out", "{ws}/prompts.txt"], ["is a file"]),
    "compare_no_out": (["compare"], ["--out", "required"]),
    "compare_out_file": (["compare", "--out", "{ws}/prompts.txt"], ["is a file"]),
    "info_mesh": (["info", "--config", "diffjax.configs.sample",
                   "--config.mesh.shape=(3,1,1)"], ["mesh shape", "devices"]),
    "evaluate_nothing_to_do": (["evaluate", "--out", "{ws}/eval"], ["give --prompts"]),
    "unknown_command": (["smaple"], ["invalid choice"]),
    "no_overrides_here": (["samplers", "--config.x=1"], ["takes no --config overrides"]),
}


# ----------------------------------------------------------------------------------------
def _write_png(path, size=8, meta=None):
    from diffjax import outputs
    img = np.full((size, size, 3), 128, np.uint8)
    path.write_bytes(outputs.png_bytes(img, meta or {"prompt": "x"}))


def _model_variants(ws):
    """A tiny diffusers folder and its broken copies (only the unet or vae differs)."""
    from safetensors.numpy import load_file, save_file

    from diffjax.weights.convert import convert
    good = ws / "m_good"
    convert("tiny", str(good), to="diffusers")
    unet_file = "unet/diffusion_pytorch_model.safetensors"

    def variant(name):
        d = ws / name
        shutil.copytree(good, d)
        return d

    p = variant("m_truncated") / unet_file
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    p = variant("m_random") / unet_file
    data = bytearray(p.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    data[start + 1000:start + 1000 + len(noise)] = noise
    p.write_bytes(bytes(data))
    assert any(not np.isfinite(v).all() for v in load_file(str(p)).values())
    p = variant("m_nan") / "vae/diffusion_pytorch_model.safetensors"
    sd = load_file(str(p))
    key = sorted(sd)[0]
    sd[key] = sd[key].copy()
    sd[key].flat[0] = np.nan
    save_file(sd, str(p))
    p = variant("m_shape") / unet_file
    sd = load_file(str(p))
    key = sorted(sd)[0]
    sd[key] = np.zeros((*sd[key].shape[:-1], sd[key].shape[-1] + 1), sd[key].dtype)
    save_file(sd, str(p))
    (variant("m_noconfig") / "unet/config.json").unlink()
    (ws / "empty_model").mkdir()
    import jax

    from diffjax.weights.checkpoint import save_checkpoint
    from diffjax.weights.components import preset_components
    comps = preset_components("tiny", 0)                    # a diffjax checkpoint with a NaN
    leaves, tree = jax.tree.flatten(comps.unet_params)
    leaves[0] = np.asarray(leaves[0]).copy()
    leaves[0].flat[0] = np.nan
    comps.unet_params = jax.tree.unflatten(tree, leaves)
    save_checkpoint(comps, str(ws / "ckpt_nan"))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from diffjax.config import load_config, save_config
    ws = tmp_path_factory.mktemp("bad_inputs")
    # an earlier, finished job: its config.json and PNGs must survive every case
    prev = ws / "prev"
    config = load_config("diffjax.configs.sample", ["prompt=a red circle", "model=tiny",
                                                    f"out={prev}", "compilation_cache="])
    save_config(config, str(prev))
    for i in range(3):
        _write_png(prev / f"00000{i}-seed{i}.png")
    (prev / "index.jsonl").write_text("{}\n")
    (ws / "corrupt_job").mkdir()
    (ws / "corrupt_job" / "config.json").write_text('{"prompt": "a red')
    (ws / "prompts.txt").write_text("a red circle\n")
    (ws / "latin1.txt").write_bytes("a red circle\nune f\u00eate\n".encode("latin-1"))
    (ws / "empty.txt").write_text("\n \n")
    (ws / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b",\n')
    (ws / "field.jsonl").write_text('{"prompt": "a", "sede": 3}\n')
    (ws / "syntax.py").write_text("def get_config():\n    return {'a': 1\n")
    (ws / "raises.py").write_text("def get_config():\n    return undefined_name\n")
    (ws / "noget.py").write_text("x = 1\n")
    (ws / "empty.json").write_text("")
    (ws / "list.json").write_text("[1, 2]")
    (ws / "trunc.json").write_text('{"prompt": "a", "seeds": ')
    legacy = json.loads((prev / "config.json").read_text())
    legacy["sampler"]["eta"] = float("nan")
    (ws / "legacy_eta_nan.json").write_text(json.dumps(legacy))
    _write_png(ws / "init.png", 32)
    (ws / "cut.png").write_bytes((ws / "init.png").read_bytes()[:-30])    # no IEND, short IDAT
    _model_variants(ws)
    return ws


def _fingerprint(ws):
    """Bytes of the earlier job's files; size and mtime of everything else."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(ws)):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            st = os.stat(p)
            h.update(f"{os.path.relpath(p, ws)} {st.st_size} {st.st_mtime_ns}\n".encode())
            if os.path.relpath(p, ws).startswith("prev"):
                h.update(open(p, "rb").read())
        h.update(" ".join(sorted(dirs)).encode())
    return h.hexdigest()


def run_cli(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:            # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_catalogue_size():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, ws, capsys):
    argv, words = CASES[name]
    argv = [a.replace("{ws}", str(ws)) for a in argv]
    before = _fingerprint(ws)
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (code, out, err[-3000:])
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no message"
    message = lines[-1].lower()
    for word in words:
        assert word.lower() in message, (word, lines[-1])
    assert _fingerprint(ws) == before, "an earlier output changed"
