"""Multi-host sampling: 2 processes x 4 CPU devices (gloo, localhost) write exactly the
files 1 process x 8 devices writes, each process writing only its own shard."""

import os
import socket
import subprocess
import sys


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pngs(d):
    return {p: open(os.path.join(d, p), "rb").read()
            for p in sorted(os.listdir(d)) if p.endswith(".png")}


def test_two_processes_equal_one(tmp_path):
    base = [sys.executable, "-m", "diffjax.cli", "sample", "--prompt", "a red circle",
            "--seeds", "0:12", "--config.sampler.steps=2", "--config.batch_size=8",
            f"--config.compilation_cache={tmp_path / 'cache'}"]
    env1 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run(base + ["--out", str(tmp_path / "one")], env=env1, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    port = _free_port()
    env4 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen(base + ["--out", str(tmp_path / "two"),
                                      f"--config.distributed.coordinator=127.0.0.1:{port}",
                                      "--config.distributed.num_processes=2",
                                      f"--config.distributed.process_id={i}"],
                              env=env4, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    one, two = _pngs(tmp_path / "one"), _pngs(tmp_path / "two")
    assert len(one) == 12 and one.keys() == two.keys()
    assert one == two
    lines = open(tmp_path / "two" / "index.jsonl").read().splitlines()
    assert len(lines) == 12
