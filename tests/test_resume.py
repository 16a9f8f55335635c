"""Exact resumption and the guards against non-finite numbers in ``vqlib.training.loop.fit``.

A resumed run must be bit-identical to an uninterrupted one, also when training draws random
numbers (dropout, the EMA quantizer's dead-code restarts), also after a SIGKILL at any moment
(during a save too), and across process counts under torchrun. A non-finite gradient or state
must never reach the weights or the disk.
"""

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import resume_worker  # noqa: E402

from vqlib.training.checkpoints import load_checkpoint  # noqa: E402
from vqlib.training.loop import TrainConfig, fit  # noqa: E402

STEPS = 60  # of the smoke VQ-VAE runs below: long enough to be killed in the middle


class Dropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = None
        self.net = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x)


def mse(model, batch):
    x, y = batch
    return {"loss": (model(x) - y).pow(2).mean()}


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True).sin())


def interrupted_at(n: int, loss_fn):
    """loss_fn, except that its n-th call (0-based) raises KeyboardInterrupt, like Ctrl-C."""
    calls = itertools.count()

    def crashing(model, batch):
        if next(calls) == n:
            raise KeyboardInterrupt
        return loss_fn(model, batch)
    return crashing


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"not bit-identical: {different}"


# ----------------------------------------------------------------------------- in one process

def test_resume_with_dropout_is_bit_identical(tmp_path):
    config = TrainConfig(steps=30, batch_size=16, lr=1e-2, log_every=5, checkpoint_every=10)
    torch.manual_seed(1)
    reference = Dropout()
    fit(reference, mse, data(), config, progress=False)
    torch.manual_seed(1)
    model = Dropout()
    with pytest.raises(KeyboardInterrupt):
        fit(model, interrupted_at(25, mse), data(), config, checkpoint=tmp_path / "run.pt", progress=False)
    resumed = Dropout()
    history = fit(resumed, mse, data(), config, checkpoint=tmp_path / "run.pt", progress=False)
    assert history.steps == 30
    assert_bit_identical(reference.state_dict(), resumed.state_dict())


def test_resume_of_the_smoke_vqvae_recipe_is_bit_identical(tmp_path):
    """EMA codebook with random dead-code restarts, interrupted between two checkpoints."""
    reference = resume_worker.run(tmp_path / "a.pt", tmp_path / "a-run.pt", steps=30, stop_at=None)
    with pytest.raises(KeyboardInterrupt):
        resume_worker.run(tmp_path / "b.pt", tmp_path / "b-run.pt", steps=30, stop_at=None,
                          loss_fn=interrupted_at(17, resume_worker.vqvae_loss))
    assert torch.load(tmp_path / "b-run.pt", weights_only=True)["history"]["steps"] == 14
    resumed = resume_worker.run(tmp_path / "b.pt", tmp_path / "b-run.pt", steps=30, stop_at=None)
    assert_bit_identical(reference, resumed)


def test_a_nan_gradient_of_a_finite_loss_never_updates_nor_reaches_disk(tmp_path):
    path = tmp_path / "run.pt"
    calls = itertools.count()

    def sqrt_at_zero(model, batch):
        terms = mse(model, batch)
        if next(calls) == 14:  # sqrt(0) = 0, but its derivative is inf, and inf · 0 = NaN
            terms["loss"] = terms["loss"] + torch.sqrt((model.net[0].weight * 0).sum())
        return terms

    torch.manual_seed(0)
    model = Dropout()
    config = TrainConfig(steps=30, batch_size=16, lr=1e-2, log_every=5, checkpoint_every=5)
    with pytest.raises(FloatingPointError, match=r"(?s)step 14: the loss is finite but the gradient of "
                                                 r"net\.0\.weight.*last checkpoint, step 10 in .* is intact"):
        fit(model, sqrt_at_zero, data(), config, checkpoint=path, progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    saved = torch.load(path, weights_only=True)
    assert saved["history"]["steps"] == 10
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


class NaNBuffer(nn.Module):
    """A running statistic that turns NaN from the 13th training forward on while the loss stays finite."""

    def __init__(self):
        super().__init__()
        self.config = None
        self.net = nn.Linear(3, 1)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("running", torch.zeros(()))

    def forward(self, x):
        if self.training:
            self.calls += 1
            self.running.fill_(float("nan") if self.calls >= 13 else 0.0)
        return self.net(x)


def test_a_non_finite_state_is_never_saved(tmp_path):
    path = tmp_path / "run.pt"
    config = TrainConfig(steps=30, batch_size=16, lr=1e-2, log_every=5, checkpoint_every=5)
    with pytest.raises(FloatingPointError, match=r"(?s)step 15: non-finite values in model\.running; this state "
                                                 r"was not saved\. The last checkpoint, step 10 in"):
        fit(NaNBuffer(), mse, data(), config, checkpoint=path, progress=False)
    assert load_checkpoint(path, NaNBuffer())["history"]["steps"] == 10


def test_no_checkpoint_no_claim_about_one():
    calls = itertools.count()

    def exploding(model, batch):
        terms = mse(model, batch)
        recon = terms["loss"] * (float("nan") if next(calls) == 3 else 1.0)
        return {"loss": recon, "recon": recon}

    with pytest.raises(FloatingPointError, match=r"step 3: loss term 'recon' is nan.*No checkpoint was requested"):
        fit(Dropout(), exploding, data(), TrainConfig(steps=10, batch_size=16), progress=False)


# ----------------------------------------------------------------------------- killed processes

def worker(*jobs: tuple[Path, Path, int | None], nproc: int = 0, slow_save: bool = False) -> subprocess.Popen:
    """Start resume_worker.py for the runs ``jobs`` (out, checkpoint, stop_at), one after the other:
    plain Python, or torchrun with ``nproc`` processes."""
    args = [str(STEPS)] + [str(a) if a is not None else "-" for job in jobs for a in job]
    if nproc:
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={port}", str(HERE / "resume_worker.py"), *args]
    else:
        cmd = [sys.executable, str(HERE / "resume_worker.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
           "VQLIB_TEST_SLOW_SAVE": "1" if slow_save else "0"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output.decode()[-3000:]


def kill_when(process: subprocess.Popen, ready, delay: float = 0.0) -> None:
    """SIGKILL the process and its workers once ``ready()`` holds (plus ``delay`` seconds); the run must
    not have ended by then."""
    deadline = time.monotonic() + 180
    while not ready():
        assert process.poll() is None, f"the run ended before it was killed:\n{process.communicate()[0].decode()}"
        assert time.monotonic() < deadline, "the run never got ready to be killed"
        time.sleep(0.002)
    time.sleep(delay)
    for pid in process_tree(process.pid):  # torchrun starts each worker in a session of its own
        os.kill(pid, signal.SIGKILL)
    process.wait(timeout=60)


def process_tree(pid: int) -> list[int]:
    """The workers a launcher started, deepest first, then the launcher (Linux's /proc)."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").glob("*/children") for c in task.read_text().split()]
    return [d for c in children for d in process_tree(c)] + [pid]


def saved_steps(checkpoint: Path) -> int:
    return torch.load(checkpoint, weights_only=True)["history"]["steps"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The smoke VQ-VAE of STEPS steps, trained without interruption in one process."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    return resume_worker.run(tmp / "final.pt", tmp / "run.pt", STEPS, None)


def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(tmp_path, uninterrupted):
    checkpoint = tmp_path / "run.pt"
    process = worker((tmp_path / "killed.pt", checkpoint, None))
    kill_when(process, checkpoint.exists, random.Random(0).uniform(0.0, 0.2))
    assert process.returncode == -signal.SIGKILL
    assert 0 < saved_steps(checkpoint) < STEPS, "the kill came too late to test anything"
    resumed = resume_worker.run(tmp_path / "resumed.pt", checkpoint, STEPS, None)
    assert_bit_identical(uninterrupted, resumed)


def test_sigkill_during_a_save_and_under_torchrun_then_resume_on_other_process_counts(tmp_path, uninterrupted):
    """Killed runs resume like runs stopped cleanly at the same step, on 1 or 2 processes.

    One process killed while a checkpoint is half saved: resumed by 1 process it equals the
    uninterrupted run; resumed by 2 it equals a 1-process run stopped at the same step, resumed by 2.
    Two processes killed at a random moment: resumed by 1 process it equals a 2-process run
    stopped at the same step, resumed by 1. (Runs on 1 and 2 processes round differently, so
    only runs with the same history of process counts can be compared bit for bit.)
    """
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    process = worker((tmp_path / "killed-one.pt", one, None), slow_save=True)
    kill_when(process, lambda: one.exists() and any(tmp_path.glob("one.pt.*.tmp")))
    assert any(tmp_path.glob("one.pt.*.tmp")), "the kill did not land during a save"
    process = worker((tmp_path / "killed-two.pt", two, None), nproc=2)
    kill_when(process, two.exists, random.Random(1).uniform(0.0, 0.2))
    one_at, two_at = saved_steps(one), saved_steps(two)
    assert 0 < one_at < STEPS and 0 < two_at < STEPS, "a kill came too late to test anything"
    one_copy, one_clean, two_clean = tmp_path / "one-copy.pt", tmp_path / "one-clean.pt", tmp_path / "two-clean.pt"
    one_copy.write_bytes(one.read_bytes())

    assert_bit_identical(uninterrupted, resume_worker.run(tmp_path / "one-resumed.pt", one, STEPS, None))
    resume_worker.run(tmp_path / "one-stopped.pt", one_clean, STEPS, stop_at=one_at)
    finish(worker((tmp_path / "one-then-two.pt", one_copy, None), (tmp_path / "one-clean-then-two.pt", one_clean, None),
                  (tmp_path / "two-stopped.pt", two_clean, two_at), nproc=2))
    assert_bit_identical(torch.load(tmp_path / "one-clean-then-two.pt"), torch.load(tmp_path / "one-then-two.pt"))
    assert_bit_identical(resume_worker.run(tmp_path / "two-clean-then-one.pt", two_clean, STEPS, None),
                         resume_worker.run(tmp_path / "two-then-one.pt", two, STEPS, None))


def test_fit_leaves_the_callers_generators_as_a_warm_load_does(tmp_path):
    """After fit, torch's global generator is where it was before fit, whether fit trained (a cold
    cache) or loaded the finished checkpoint (a warm one): the chapters print the same numbers both ways.
    Dropout makes training draw random numbers, so without the fork the two would differ."""
    path = tmp_path / "dropout.pt"
    config = TrainConfig(steps=5, batch_size=8, lr=1e-2, log_every=5)

    def run() -> torch.Tensor:
        torch.manual_seed(123)
        fit(Dropout(), mse, data(), config, checkpoint=path, progress=False)
        return torch.rand(4)

    cold = run()
    assert path.exists()
    warm = run()
    torch.manual_seed(123)
    Dropout()  # the model is built (and draws its initial weights) before fit, in both runs
    assert torch.equal(cold, warm)
    assert torch.equal(cold, torch.rand(4))
