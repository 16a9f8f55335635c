import dataclasses
import itertools

import pytest
import torch
from helpers import Tiny, TinyConfig, mse
from torch.utils.data import TensorDataset

from vqlib.core.cache import atomic_save, cache_dir
from vqlib.training.checkpoints import checkpoint_path, load_checkpoint
from vqlib.training.loop import History, TrainConfig, fit, training_batches


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True).sin())


def quiet(**kw):
    return TrainConfig(**{"steps": 40, "batch_size": 16, "lr": 1e-2, "log_every": 5, **kw})


def test_fit_cuts_the_loss_and_records_history(data):
    model = Tiny()
    before = mse(model, data.tensors)["loss"].item()
    hist = fit(model, mse, data, quiet(steps=200), progress=False, device="cpu",
               eval_fn=lambda m: mse(m, data.tensors))
    after = mse(model, data.tensors)["loss"].item()
    assert after < before / 5
    assert hist.steps == 200 and hist.stopped == "steps"
    steps, values = hist.series("loss")
    assert steps[0] == 5 and steps[-1] == 200 and len(values) == 40
    assert hist.last("loss") == pytest.approx(after, rel=1e-5)
    assert not model.training


def test_eval_runs_in_eval_mode_without_grad_at_the_interval(data):
    calls = []

    def eval_fn(m):
        calls.append((m.training, torch.is_grad_enabled()))
        return {"x": 1.0}

    hist = fit(Tiny(), mse, data, quiet(steps=20, eval_every=8), eval_fn=eval_fn, progress=False)
    assert [r["step"] for r in hist.eval] == [8, 16, 20]
    assert calls == [(False, False)] * 3


def test_resume_after_interrupt_matches_an_uninterrupted_run(data, tmp_path):
    config = quiet(steps=30, checkpoint_every=10)
    torch.manual_seed(1)
    reference = Tiny()
    torch.manual_seed(1)
    model = Tiny()
    fit(reference, mse, data, config, progress=False)

    calls = itertools.count()

    def crashing(m, batch):
        if next(calls) == 25:
            raise KeyboardInterrupt
        return mse(m, batch)

    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(model, crashing, data, config, checkpoint=path, progress=False)
    assert load_checkpoint(path, Tiny())["history"]["steps"] == 20  # lost at most one interval
    resumed = Tiny()
    hist = fit(resumed, mse, data, config, checkpoint=path, progress=False)
    assert hist.steps == 30
    for a, b in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_finished_checkpoint_is_loaded_not_retrained(data, tmp_path):
    path = tmp_path / "done.pt"
    first = Tiny()
    fit(first, mse, data, quiet(), checkpoint=path, progress=False)

    def never(m, batch):
        raise AssertionError("a finished run must not train again")

    second = Tiny()
    hist = fit(second, never, data, quiet(), checkpoint=path, progress=False)
    assert hist.steps == 40
    for a, b in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(a, b)
    # a larger budget continues the same run
    more = fit(Tiny(), mse, data, quiet(steps=50), checkpoint=path, progress=False)
    assert more.steps == 50


def test_checkpoint_from_another_config_is_refused_and_kept(data, tmp_path):
    path = tmp_path / "run.pt"
    fit(Tiny(), mse, data, quiet(), checkpoint=path, progress=False)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"(?s)different model config.*width.*16"):
        fit(Tiny(TinyConfig(width=16)), mse, data, quiet(), checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"(?s)different train config.*lr"):
        fit(Tiny(), mse, data, quiet(lr=0.5), checkpoint=path, progress=False)
    assert path.read_bytes() == before


def test_corrupt_checkpoint_gives_a_clear_error(data, tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable vqlib checkpoint"):
        fit(Tiny(), mse, data, quiet(), checkpoint=path, progress=False)
    assert path.read_bytes() == b"not a checkpoint"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", Tiny())


def test_nan_guard_names_step_and_term_and_keeps_last_checkpoint(data, tmp_path):
    path = tmp_path / "run.pt"
    calls = itertools.count()

    def exploding(m, batch):
        terms = mse(m, batch)
        kl = torch.tensor(float("nan")) if next(calls) >= 12 else torch.tensor(0.0)
        return {"loss": terms["loss"] + kl, "kl": kl}

    model = Tiny()
    # the total is NaN because 'kl' is: the message names the part a reader can fix, and what is on disk
    with pytest.raises(FloatingPointError, match=r"(?s)step 12: loss term 'kl' is nan.*last checkpoint, step 10 in"):
        fit(model, exploding, data, quiet(checkpoint_every=10), checkpoint=path, progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert load_checkpoint(path, Tiny())["history"]["steps"] == 10


def test_time_budget_stops_early(data):
    hist = fit(Tiny(), mse, data, quiet(steps=10_000, max_seconds=0.05), progress=False)
    assert hist.stopped == "time" and 0 < hist.steps < 10_000


def test_a_run_stopped_by_the_clock_is_never_reused_as_finished(data, tmp_path):
    """A user's time limit leaves an unfinished checkpoint: the next call resumes it to its step
    budget instead of loading it, and the result equals an uninterrupted run."""
    path = tmp_path / "clocked.pt"
    config = quiet(steps=4000, max_seconds=0.05, checkpoint_every=10**6)
    torch.manual_seed(0)
    stopped = fit(Tiny(), mse, data, config, checkpoint=path, progress=False)
    assert stopped.stopped == "time" and stopped.steps < 4000
    assert load_checkpoint(path, Tiny())["history"]["steps"] == stopped.steps  # written, but unfinished
    torch.manual_seed(1)  # the checkpoint's weights replace these
    model = Tiny()
    resumed = fit(model, mse, data, dataclasses.replace(config, max_seconds=None), checkpoint=path, progress=False)
    assert resumed.steps == 4000 and resumed.stopped == "steps"
    torch.manual_seed(0)
    whole = Tiny()
    fit(whole, mse, data, dataclasses.replace(config, max_seconds=None), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), whole.state_dict().values()))


def test_loss_fn_must_return_loss(data):
    with pytest.raises(KeyError, match="'loss' entry"):
        fit(Tiny(), lambda m, b: {"total": mse(m, b)["loss"]}, data, quiet(), progress=False)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(batch_size=0), dict(lr=0.0)])
def test_bad_train_config(bad):
    with pytest.raises(ValueError, match="must be"):
        quiet(**bad)


def test_empty_dataset_is_refused():
    empty = TensorDataset(torch.zeros(0, 3), torch.zeros(0, 1))
    with pytest.raises(ValueError, match="empty"):
        fit(Tiny(), mse, empty, quiet(), progress=False)


def test_batches_resume_where_they_left_off(data):
    full = [b[0] for b in itertools.islice(training_batches(data, 16, seed=3, start_step=0), 11)]
    resumed = [b[0] for b in itertools.islice(training_batches(data, 16, seed=3, start_step=6), 5)]
    for a, b in zip(full[6:], resumed):
        torch.testing.assert_close(a, b)
    epoch = torch.cat(full[:4])  # one epoch covers every example once
    assert torch.unique(epoch, dim=0).shape[0] == 64


def test_atomic_save_never_leaves_half_a_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": 1}, path)
    with pytest.raises(Exception):
        atomic_save({"bad": lambda: 0}, path)  # lambdas cannot be pickled
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_cache_dir_and_checkpoint_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("VQLIB_CACHE", str(tmp_path / "new" / "cache"))
    assert cache_dir().is_dir()
    a = checkpoint_path("m", TinyConfig(), quiet(), profile="quick")
    assert a == checkpoint_path("m", TinyConfig(), quiet(), profile="quick")
    assert a != checkpoint_path("m", TinyConfig(width=9), quiet(), profile="quick")
    import vqlib.training.checkpoints as checkpoints

    with monkeypatch.context() as earlier:  # a cache of an earlier vqlib, whose training drew otherwise
        earlier.setattr(checkpoints, "KEY_GENERATION", checkpoints.KEY_GENERATION - 1)
        assert checkpoint_path("m", TinyConfig(), quiet(), profile="quick") != a
    assert a.name.startswith("m-quick-")
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("VQLIB_CACHE", str(tmp_path / "file"))
    with pytest.raises(NotADirectoryError, match="must name a directory"):
        cache_dir()


def test_history_series_names_what_was_recorded():
    hist = History(train=[{"step": 1, "loss": 0.5}])
    with pytest.raises(KeyError, match=r"no train series 'kl'; recorded: \['loss'\]"):
        hist.series("kl")
