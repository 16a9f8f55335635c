"""A trained model as an ONNX graph, and the check that ONNX Runtime computes what PyTorch does.

The built book's live figures (``vqlib.book.live``) run the chapters' models in the reader's
browser with ONNX Runtime Web; a static page cannot run PyTorch. This file exports a module once,
with the fixed shapes of its example inputs, and measures how far ONNX Runtime's outputs are from
PyTorch's on the same inputs: every exported graph of the book is tested with it.

What is in it:

- ``Method``: a module whose forward is another module's method (``Method(vqvae, "decode")``), so
  that any method can be exported, not only ``forward``.
- ``export_onnx``: module and example inputs -> the bytes of the ONNX model (``torch.onnx.export``
  with its ``dynamo`` exporter; needs the ``onnx`` and ``onnxscript`` packages).
- ``onnx_error``: the largest absolute difference between ONNX Runtime's outputs and the module's
  on given inputs (needs ``onnxruntime``).

Value checks of the book's models (codes in [0, K), labels in range) are skipped while
``torch.export`` traces a model (``torch.compiler.is_exporting()``): a trace has shapes, not values.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from typing import Sequence

import torch
from torch import nn

from vqlib.core.inference import evaluating


class Method(nn.Module):
    """``Method(model, "decode")(x) == model.decode(x)``: a method as a module's forward, to export it."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        if not callable(getattr(model, name, None)):
            raise ValueError(f"{type(model).__name__} has no method {name!r}")
        self.model, self.name = model, name

    def forward(self, *inputs: torch.Tensor):
        return getattr(self.model, self.name)(*inputs)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress to stdout and logs notes (e.g. that torchvision is absent) to stderr;
    a chapter's page shows neither (and the book build treats stderr as an error)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(module: nn.Module, inputs: Sequence[torch.Tensor], input_names: Sequence[str],
                output_names: Sequence[str]) -> bytes:
    """The ONNX model of ``module`` in eval mode, traced on ``inputs`` (its shapes are fixed) -> bytes.

    A CPU copy of the module is traced, and the global random generator is left as it was, so an
    export in a chapter changes neither its model nor the numbers it draws after."""
    if len(inputs) != len(input_names):
        raise ValueError(f"got {len(inputs)} example inputs for {len(input_names)} input names {list(input_names)}")
    module = copy.deepcopy(module).cpu()  # the graph runs on a CPU; the caller's model stays where it is
    inputs = tuple(t.cpu() for t in inputs)
    with evaluating(module), torch.no_grad(), _quiet_exporter(), torch.random.fork_rng():
        program = torch.onnx.export(module, inputs, input_names=list(input_names),
                                    output_names=list(output_names), dynamo=True, verbose=False)
        buffer = io.BytesIO()
        program.save(buffer)
    return buffer.getvalue()


def onnx_error(model: bytes, module: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """The largest absolute difference, over every output, between ONNX Runtime running ``model``
    (the bytes of ``export_onnx``) and ``module`` (eval mode, no gradient) on the same ``inputs``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"the ONNX model takes {len(names)} inputs {names}, got {len(inputs)}")
    got = session.run(None, {name: t.cpu().numpy() for name, t in zip(names, inputs)})
    with evaluating(module), torch.no_grad():
        want = module(*inputs)
    want = tuple(want) if isinstance(want, (tuple, list)) else (want,)
    if len(want) != len(got):
        raise ValueError(f"the ONNX model has {len(got)} outputs, the module {len(want)}")
    return max(float((torch.from_numpy(g) - w.cpu().float()).abs().max()) for g, w in zip(got, want))
