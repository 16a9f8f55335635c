"""Checkpoints of trained models: one file per name, profile, exact configs and data, in the cache.

A chapter gets "the trained model for this config and profile" by passing
``checkpoint=checkpoint_path(name, model.config, train_config, data=train)`` to ``fit``: a finished
checkpoint is loaded instead of retrained, so later chapters reuse earlier models, and a model trained
on other data (the offline fallback digits, say) lives under another name.

``save_checkpoint`` writes a dict of tensors and plain data (numbers, strings, lists, dicts) atomically
with a SHA-256 checksum of its contents. ``load_checkpoint`` reads it without running any code
(``torch.load(weights_only=True)``), verifies the checksum, and refuses a file written by another
model (class, configs, submodules and their hyper-parameters, state-dict layout) or training config,
saying what differs. A checkpoint of an older vqlib (no checksum) loads with a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from vqlib.core.cache import atomic_save, cache_dir
from vqlib.core.profile import check_profile, current_profile

if TYPE_CHECKING:
    from vqlib.training.loop import TrainConfig


def config_dict(config: Any) -> dict:
    """A JSON-friendly dict of a (dataclass) config; ``{}`` for None."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        return json.loads(json.dumps(dataclasses.asdict(config), default=str))
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config), default=str))
    raise TypeError(f"expected a dataclass config or a mapping, got {type(config).__name__}")


def data_digest(*tensors: torch.Tensor) -> str:
    """A short digest of training data, for a checkpoint key: another data set never loads this one's model."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def data_identity(data: Any) -> str:
    """``data_digest`` of a TensorDataset, a tensor or a sequence of tensors."""
    tensors = getattr(data, "tensors", None)
    if tensors is None:
        tensors = (data,) if torch.is_tensor(data) else tuple(data) if isinstance(data, (list, tuple)) else ()
    if not tensors or not all(torch.is_tensor(t) for t in tensors):
        raise TypeError(f"data must be a TensorDataset, a tensor or a sequence of tensors, got {type(data).__name__}")
    return data_digest(*tensors)


# Joins every checkpoint's key. Raised when the same configs and data would now train other weights,
# so that a cache written by an earlier vqlib retrains instead of serving models the book's numbers
# did not come from. 2: fit draws from a fork of torch's generators, so a model built after another
# model's training starts from other random numbers than it did before.
KEY_GENERATION = 2


def checkpoint_path(name: str, *configs: Any, data: Any = None, profile: str | None = None) -> Path:
    """The cache path of a trained model: one file per name, profile, exact configs and training
    ``data`` (a TensorDataset or tensors; its digest joins the key when given), and ``KEY_GENERATION``."""
    keys = ([{"generation": KEY_GENERATION}] + [config_dict(c) for c in configs]
            + ([{"data": data_identity(data)}] if data is not None else []))
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "checkpoints" / f"{name}-{check_profile(profile or current_profile())}-{digest}.pt"


def model_layout(model: nn.Module) -> dict:
    """What makes two models interchangeable beyond their top config: every submodule's class and
    hyper-parameters (its dataclass config, else its ``extra_repr``), and the state dict's names,
    shapes and dtypes. A quantizer swapped for another with equal tensor shapes still differs here."""
    modules = [[name, type(m).__qualname__,
                config_dict(m.config) if dataclasses.is_dataclass(getattr(m, "config", None)) else m.extra_repr()]
               for name, m in model.named_modules() if name]
    state = [[key, list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in model.state_dict().items()]
    return {"modules": modules, "state_dict": state}


def checkpoint_meta(model: nn.Module, config: TrainConfig | None = None) -> dict:
    """What must match for a checkpoint to be loaded: the model (class, config, layout) and, given
    ``config``, the training config. Budgets (steps, time, logging) may change."""
    meta = {"model": type(model).__qualname__, "model_config": config_dict(getattr(model, "config", None)),
            **model_layout(model)}
    if config is not None:
        budget = {"steps", "max_seconds", "eval_every", "log_every", "checkpoint_every"}
        meta["train_config"] = {k: v for k, v in config_dict(config).items() if k not in budget}
    return meta


# ----------------------------------------------------------------------------- the file

PLAIN = (str, int, float, bool, type(None))


def _hash(obj: Any, digest: Any, where: str) -> None:
    """Feed ``obj`` into ``digest``; a TypeError names anything that is not a tensor or plain data."""
    if type(obj) in PLAIN:
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif type(obj) in (torch.Tensor, nn.Parameter):
        t = obj.detach().cpu().contiguous()
        digest.update(f"tensor:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    elif type(obj) in (dict, OrderedDict):
        digest.update(f"dict:{len(obj)};".encode())
        for key, value in obj.items():
            _hash(key, digest, where)
            _hash(value, digest, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple, torch.Size):
        digest.update(f"{type(obj).__name__}:{len(obj)};".encode())
        for i, value in enumerate(obj):
            _hash(value, digest, f"{where}[{i}]")
    else:
        raise TypeError(f"a checkpoint holds only tensors and plain data (dict, list, tuple, str, int, float, "
                        f"bool, None), but checkpoint{where} is a {type(obj).__module__}.{type(obj).__qualname__}")


def contents_digest(obj: dict) -> str:
    """SHA-256 of a checkpoint dict's contents, its "checksum" entry aside."""
    digest = hashlib.sha256()
    _hash({k: v for k, v in obj.items() if k != "checksum"}, digest, "")
    return digest.hexdigest()


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Write a checkpoint dict (tensors and plain data only) atomically, with a checksum of its contents."""
    if not isinstance(obj, dict):
        raise TypeError(f"a checkpoint is a dict, got {type(obj).__name__}")
    atomic_save({**obj, "checksum": contents_digest(obj)}, path)


def _difference(got: Any, want: Any) -> str:
    if isinstance(got, list) and isinstance(want, list):
        for i, (a, b) in enumerate(zip(got, want)):
            if a != b:
                return f"  first difference, entry {i}:\n  in the checkpoint: {a}\n  expected:          {b}\n"
        return f"  in the checkpoint: {len(got)} entries\n  expected:          {len(want)} entries\n"
    return f"  in the checkpoint: {got}\n  expected:          {want}\n"


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict read without running code, its checksum verified; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if code:
            raise ValueError(f"{path} is not a vqlib checkpoint: it asks Python to run {code[1]} when loaded, "
                             "and vqlib loads only tensors and plain data, so nothing in it was run. Delete the "
                             "file unless you know where it came from") from None
        raise ValueError(f"{path} is not a readable vqlib checkpoint ({str(err).splitlines()[-1]}); "
                         "delete it to retrain") from None
    except Exception as err:
        raise ValueError(f"{path} is not a readable vqlib checkpoint ({err}); delete it to retrain") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise ValueError(f"{path} is not a vqlib checkpoint (expected a dict with 'model' and 'meta')")
    if "checksum" not in ckpt:
        warnings.warn(f"{path} was written by an older vqlib, without a checksum or a record of the model's "
                      "layout, so neither can be checked; it is loaded as it is (delete it to retrain)", stacklevel=3)
    elif ckpt["checksum"] != contents_digest(ckpt):
        raise ValueError(f"{path} failed its checksum: it was damaged or changed after it was written. "
                         "Delete it to retrain")
    return ckpt


def load_checkpoint(path: str | Path, model: nn.Module, config: TrainConfig | None = None) -> dict:
    """Load weights into ``model`` and return the checkpoint dict (see the module docstring).

    The checkpoint must have been written by the same model (class, config, submodules, state-dict
    layout) and, with ``config``, the same training config (budgets aside); otherwise a ValueError
    says what differs.
    """
    ckpt = read_checkpoint(path)
    legacy = "checksum" not in ckpt  # an older vqlib recorded less; what it recorded is compared
    for key, want in checkpoint_meta(model, config).items():
        got = ckpt["meta"].get(key)
        if got != want and not (legacy and key not in ckpt["meta"]):
            raise ValueError(f"checkpoint {path} was written with a different {key.replace('_', ' ')}:\n"
                             f"{_difference(got, want)}use another checkpoint path, or delete the file to retrain")
    model.load_state_dict(ckpt["model"])
    return ckpt
