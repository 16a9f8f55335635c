"""Two processes with the gloo backend on this machine (launched by torchrun)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ddp_worker  # noqa: E402

from vqlib.training.loop import training_batches  # noqa: E402


def launch(nproc: int, out: Path, steps: int, checkpoint: Path | None = None, data_init: bool = True,
           gan: bool = False) -> None:
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(HERE / "ddp_worker.py"), str(out), str(steps),
           str(checkpoint) if checkpoint else "-", "1" if data_init else "0", "1" if gan else "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def states(out: Path, world: int) -> list[dict]:
    return [torch.load(out / f"rank{r}-of-{world}.pt") for r in range(world)]


def assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch(2, out, steps=8, data_init=True, gan=True)
    return states(out, 2) + [torch.load(out / f"gan-rank{r}-of-2.pt") for r in range(2)]


def test_codebooks_agree_on_every_rank(two_process_run):
    rank0, rank1, _, _ = two_process_run
    torch.testing.assert_close(rank0["quantizer.codebook"], rank1["quantizer.codebook"], rtol=0, atol=0)
    assert_same(rank0, rank1, rtol=0, atol=0)


def test_gan_step_keeps_both_networks_in_step_on_every_rank(two_process_run):
    """Each process trains on its slice; GANStep averages both networks' gradients over the processes."""
    _, _, gan0, gan1 = two_process_run
    assert_same(gan0, gan1, rtol=0, atol=0)
    assert gan0["discriminator_trained"]


def test_two_processes_equal_one_process_on_the_concatenated_batches(tmp_path):
    launch(2, tmp_path, steps=8, data_init=False)
    (rank0, _) = states(tmp_path, 2)
    ddp_worker.run(tmp_path, steps=8, checkpoint=None, data_init=False)
    (single,) = states(tmp_path, 1)
    assert_same(rank0, single, rtol=1e-4, atol=1e-5)  # includes usage counts over the whole dataset
    assert rank0["counts"].sum() == len(ddp_worker.dataset()) * 6 * 6


def test_checkpoints_resume_across_process_counts(tmp_path):
    ddp_worker.run(tmp_path, steps=9, checkpoint=None, data_init=False)
    (reference,) = states(tmp_path, 1)
    # written by 2 processes, finished by 1
    launch(2, tmp_path, steps=6, checkpoint=tmp_path / "a.pt", data_init=False)
    ddp_worker.run(tmp_path, steps=9, checkpoint=str(tmp_path / "a.pt"), data_init=False)
    assert_same(states(tmp_path, 1)[0], reference, rtol=1e-4, atol=1e-5)
    # written by 1 process, finished by 2
    ddp_worker.run(tmp_path, steps=6, checkpoint=str(tmp_path / "b.pt"), data_init=False)
    launch(2, tmp_path, steps=9, checkpoint=tmp_path / "b.pt", data_init=False)
    assert_same(states(tmp_path, 2)[0], reference, rtol=1e-4, atol=1e-5)


def test_global_batch_is_split_into_contiguous_slices():
    data = ddp_worker.dataset()
    whole = next(training_batches(data, 8, seed=1, start_step=5))[0]
    halves = [next(training_batches(data, 8, seed=1, start_step=5, rank=r, world=2))[0] for r in range(2)]
    torch.testing.assert_close(torch.cat(halves), whole)


def test_bad_splits_are_refused():
    data = ddp_worker.dataset()
    with pytest.raises(ValueError, match="cannot be split evenly over 3 processes"):
        next(training_batches(data, 8, seed=0, start_step=0, rank=0, world=3))
    tiny = torch.utils.data.TensorDataset(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="1 examples, fewer than the 2 processes"):
        next(training_batches(tiny, 8, seed=0, start_step=0, rank=0, world=2))
