"""Multi-host sampling jobs, run as real processes (2 processes x 4 CPU devices over gloo on
localhost, or 1 process x 8 devices):

- an uninterrupted 2-process job writes the files of the reference;
- the same job killed with SIGKILL on both processes at three different moments (before
  either wrote a file; in the middle of a batch's writes, after a temporary file was
  written and before its rename; a batch later), each time rerun -- once after the folder
  was moved with `mv` -- finishes byte-identical to the reference; a SIGTERM to one
  process stops both after the batch in flight (exit status 75), when a batch is left;
- a copy of the folder as it was after the second kill, restarted as 1 process x 8
  devices, finishes byte-identical without rewriting any file that was finished;
- a process whose peer never arrives fails within its timeout, naming the coordinator.

Cheap on purpose: the "tiny" preset, 2 steps, 32x32, 24 images in 3 batches of 8; the
persistent compilation cache is shared by every run of the module. Kills are placed by a
wrapper that SIGKILLs its own process at its N-th PNG write (`_KILLER`); the test then
SIGKILLs the other process.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

N_IMAGES = 24

# Runs `diffjax sample` with outputs.atomic_write wrapped. argv[1] "N": the N-th PNG write
# (0-based) of this process writes half its temporary file and then the process SIGKILLs
# itself, so the kill lands between the write and the rename; "term:N": at the N-th write
# the process sends itself SIGTERM (and goes on writing: the batch in flight finishes).
_KILLER = r'''
import os, signal, sys
from diffjax import cli, outputs
term = sys.argv[1].startswith("term:")
kill_at = int(sys.argv[1].split(":")[-1])
count = [0]
real = outputs.atomic_write
def atomic_write(path, data):
    name = os.fspath(path)
    if name.endswith(".png"):
        if count[0] == kill_at and term:
            os.kill(os.getpid(), signal.SIGTERM)
        elif count[0] == kill_at:
            d, b = os.path.split(name)
            with open(os.path.join(d, f".{b}.tmp-{os.getpid()}"), "wb") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
    real(path, data)
outputs.atomic_write = atomic_write
sys.exit(cli.main(sys.argv[2:]))
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pngs(d):
    return {p: open(os.path.join(d, p), "rb").read()
            for p in sorted(os.listdir(d)) if p.endswith(".png")}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    killer = tmp / "killer.py"
    killer.write_text(_KILLER)
    args = ["sample", "--prompt", "a red circle", "--model", "tiny", f"--seeds=0:{N_IMAGES}",
            "--config.sampler.steps=2", "--config.height=32", "--config.width=32",
            "--config.batch_size=8", f"--config.compilation_cache={tmp / 'cache'}"]

    def launch(out, processes=2, kill_at=None, timeout_s=60, only=None):
        """Start the job's processes (or `only` those ids); kill_at: {process id: PNG
        write to die at}."""
        devices = 8 // processes
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        port = _free_port()
        procs = []
        for pid in range(processes) if only is None else only:
            dist = ([f"--config.distributed.coordinator=127.0.0.1:{port}",
                     f"--config.distributed.num_processes={processes}",
                     f"--config.distributed.process_id={pid}",
                     f"--config.distributed.timeout_s={timeout_s}"] if processes > 1 else [])
            at = str((kill_at or {}).get(pid, -1))
            cmd = [sys.executable, str(killer), str(at), *args, "--out", str(out), *dist]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        return procs

    def finish(procs, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        if any(p.poll() == -signal.SIGKILL for p in procs):   # one died: kill -9 the rest
            for p in procs:
                if p.poll() is None:
                    p.kill()
        outs = [p.communicate(timeout=max(1, deadline - time.time())) for p in procs]
        return [p.returncode for p in procs], [o[1] for o in outs]

    return tmp, launch, finish


@pytest.fixture(scope="module")
def reference(job):
    tmp, launch, finish = job
    codes, errs = finish(launch(tmp / "reference"))
    assert codes == [0, 0], [e[-2000:] for e in errs]
    files = _pngs(tmp / "reference")
    assert len(files) == N_IMAGES
    return files


def test_killed_three_times_resumes_identically(job, reference):
    tmp, launch, finish = job
    out = tmp / "killed"
    # 1: process 0 dies at its first PNG write (process 1 may have written its rows)
    codes, _ = finish(launch(out, kill_at={0: 0}))
    assert -signal.SIGKILL in codes
    assert len(_pngs(out)) < N_IMAGES
    # 2: process 1 dies halfway through its second batch's writes
    codes, _ = finish(launch(out, kill_at={1: 2}))
    assert -signal.SIGKILL in codes
    shutil.copytree(out, tmp / "after_second_kill")         # for the 1 x 8 restart
    moved = tmp / "moved"
    shutil.move(out, moved)                                 # `mv`: out differs in config.json
    # 3: process 0 dies at its second write (it has a batch left at least)
    codes, _ = finish(launch(moved, kill_at={0: 1}))
    assert -signal.SIGKILL in codes
    n_left = N_IMAGES - len(_pngs(moved))
    assert n_left > 0
    if n_left > 8:   # SIGTERM to process 1 only: both stop after the batch in flight
        codes, errs = finish(launch(moved, kill_at={1: "term:0"}))
        assert codes == [75, 75], [e[-2000:] for e in errs]
        assert "rerun the same command" in errs[0].lower()
        assert len(_pngs(moved)) == N_IMAGES - n_left + 8
    codes, errs = finish(launch(moved))
    assert codes == [0, 0], [e[-2000:] for e in errs]
    assert _pngs(moved) == reference
    assert not [p for p in os.listdir(moved) if ".tmp-" in p]   # temporaries removed
    lines = (moved / "index.jsonl").read_text().splitlines()
    assert len(lines) == N_IMAGES


def test_restart_with_another_process_count(job, reference):
    tmp, launch, finish = job
    out = tmp / "after_second_kill"
    if not out.exists():
        pytest.skip("needs the folder test_killed_three_times_resumes_identically leaves")
    before = {p: os.stat(out / p) for p in _pngs(out)}
    assert 0 < len(before) < N_IMAGES
    codes, errs = finish(launch(out, processes=1))
    assert codes == [0], errs[0][-2000:]
    assert _pngs(out) == reference
    for p, st in before.items():                              # finished files not redone
        after = os.stat(out / p)
        assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), p


def test_missing_peer_fails_in_bounded_time(job):
    tmp, launch, finish = job
    t0 = time.time()
    procs = launch(tmp / "alone", processes=2, timeout_s=3, only=[0])  # 1 never starts
    codes, errs = finish(procs, timeout=120)
    assert codes[0] == 2, errs[0][-2000:]
    assert time.time() - t0 < 60
    msg = errs[0].strip().splitlines()[-1]
    assert "127.0.0.1:" in msg and "could not join" in msg and "Traceback" not in errs[0]
