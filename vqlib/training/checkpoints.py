"""Checkpoints of trained models: one file per name, profile and exact configs, in the cache.

A chapter gets "the trained model for this config and profile" by passing
``checkpoint=checkpoint_path(name, model.config, train_config)`` to ``fit``: a finished checkpoint is
loaded instead of retrained, so later chapters reuse earlier models. ``load_checkpoint`` refuses a
file written by another model class, model config or training config, and says what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from vqlib.core.cache import cache_dir
from vqlib.core.profile import current_profile

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


def checkpoint_path(name: str, *configs: Any, profile: str | None = None) -> Path:
    """The cache path of a trained model: one file per name, profile and exact configs."""
    blob = json.dumps([config_dict(c) for c in configs], sort_keys=True).encode()
    digest = hashlib.sha256(blob).hexdigest()[:10]
    return cache_dir() / "checkpoints" / f"{name}-{profile or current_profile()}-{digest}.pt"


def checkpoint_meta(model: nn.Module, config: TrainConfig) -> dict:
    # What must match for a checkpoint to be resumed. Budgets (steps, time, logging) may change.
    budget = {"steps", "max_seconds", "eval_every", "log_every", "checkpoint_every"}
    train = {k: v for k, v in config_dict(config).items() if k not in budget}
    return {"model": type(model).__qualname__, "model_config": config_dict(getattr(model, "config", None)),
            "train_config": train}


def load_checkpoint(path: str | Path, model: nn.Module, config: TrainConfig | None = None) -> dict:
    """Load weights into ``model`` and return the checkpoint dict.

    With ``config``, the checkpoint must have been written by the same model class, model config
    and training config (budgets aside); otherwise a ValueError says what differs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{path} is not a readable vqlib checkpoint ({err}); delete it to retrain") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise ValueError(f"{path} is not a vqlib checkpoint (expected a dict with 'model' and 'meta')")
    expected = checkpoint_meta(model, config) if config is not None else {
        "model": type(model).__qualname__, "model_config": config_dict(getattr(model, "config", None))}
    for key, want in expected.items():
        got = ckpt["meta"].get(key)
        if got != want:
            raise ValueError(f"checkpoint {path} was written with a different {key.replace('_', ' ')}:\n"
                             f"  in the checkpoint: {got}\n  expected:          {want}\n"
                             "use another checkpoint path, or delete the file to retrain")
    model.load_state_dict(ckpt["model"])
    return ckpt
