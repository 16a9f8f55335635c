"""Self-checking exercises: compare a reader's answer with the expected one, and say what is wrong.

A chapter puts a check right after the cell the reader writes::

    check("kl", kl(mu, logvar), vqlib.tokenizers.vae.gaussian_kl(mu, logvar))
    check_shape("z_q", z_q, (None, 64, 7, 7))  # None: any size
    check_function("free_bits_kl", free_bits_kl, reference=my_reference, inputs=[(mu, logvar, 0.5)])

A correct answer prints ``✓ kl: correct``. A wrong one raises ``ExerciseError`` (an
``AssertionError``) whose message says precisely what differs: the type, the shape, the dtype,
or which element is off and by how much. Raising, not printing, is deliberate: a notebook stops at
the first wrong answer, and the book build (which runs every solution through its check) fails
when a published solution is wrong.

Values may be tensors, NumPy arrays, Python numbers, strings, or (nested) tuples, lists, named
tuples and dicts of those. Tensors are compared on the CPU, detached; floating-point values with
a tolerance (``|got - expected| <= atol + rtol * |expected|``), integers, booleans and strings
exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["ExerciseError", "check", "check_shape", "check_function", "difference"]

# Looser than torch.testing's float32 defaults: a reader's formula may be arranged differently
# from the reference (log of a product vs a sum of logs) and round differently.
RTOL = 1e-4
ATOL = 1e-6


class ExerciseError(AssertionError):
    """A wrong answer; the message says what is wrong."""


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} ({value.dtype})"
    return f"{type(value).__name__} {value!r}" if _is_scalar(value) else f"a {type(value).__name__}"


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, np.number, np.bool_))


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray)) or _is_scalar(value)


def _index(flat: int, shape: tuple[int, ...]) -> str:
    if not shape:
        return ""
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat, shape)) + "]"


def _compare_arrays(name: str, got: Any, expected: Any, rtol: float, atol: float) -> str | None:
    both_typed = isinstance(got, (torch.Tensor, np.ndarray)) and isinstance(expected, (torch.Tensor, np.ndarray))
    g = torch.as_tensor(got).detach().cpu()
    e = torch.as_tensor(expected).detach().cpu()
    if g.shape != e.shape:
        hint = ""
        if [n for n in g.shape if n != 1] == [n for n in e.shape if n != 1]:
            hint = " (an extra or a missing dimension of size 1: squeeze or unsqueeze?)"
        elif g.numel() == e.numel():
            hint = " (the same number of elements: transposed?)" if g.shape == e.shape[::-1] and g.dim() > 1 \
                else " (the same number of elements: reshaped or permuted?)"
        return f"{name} has shape {tuple(g.shape)} but should have shape {tuple(e.shape)}{hint}"
    if both_typed and type(got) is not type(expected):
        return f"{name} is {_describe(got)} but should be {_describe(expected)}"
    if both_typed and g.dtype != e.dtype:
        return f"{name} has dtype {g.dtype} but should have dtype {e.dtype}"
    if g.numel() == 0:
        return None
    exact = not (g.is_floating_point() or e.is_floating_point())
    if exact:
        wrong = g.ne(e)
        diff = wrong.to(torch.float64)
    else:
        g64, e64 = g.to(torch.float64), e.to(torch.float64)
        diff = (g64 - e64).abs()
        same_special = (g64.isnan() & e64.isnan()) | (g64.isinf() & (g64 == e64))  # nan = nan, inf = inf
        one_nan = g64.isnan() ^ e64.isnan()
        wrong = ((diff > atol + rtol * e64.abs()) | one_nan) & ~same_special
        diff = torch.where(one_nan, float("inf"), diff.nan_to_num(0.0))
    n_wrong = int(wrong.sum())
    if n_wrong == 0:
        return None
    worst = int(torch.where(wrong, diff, torch.zeros_like(diff)).flatten().argmax())
    gv, ev = g.flatten()[worst].item(), e.flatten()[worst].item()
    where = f"{name}{_index(worst, tuple(g.shape))}"
    if exact:
        msg = f"{where} is {gv!r} but should be {ev!r}"
    else:
        msg = f"{where} is {gv:.6g} but should be {ev:.6g}"
        if math.isfinite(gv) and math.isfinite(ev):
            msg += f" (off by {abs(gv - ev):.3g}; the tolerance there is {atol + rtol * abs(ev):.3g})"
    if g.numel() > 1:
        msg += f"; {n_wrong} of {g.numel()} elements differ, this one the most" if n_wrong > 1 else \
            f"; it is the only one of the {g.numel()} elements that differs"
    return msg


def difference(got: Any, expected: Any, name: str = "the answer", *, rtol: float = RTOL,
               atol: float = ATOL) -> str | None:
    """What is wrong with ``got`` compared with ``expected``, in one sentence, or None if nothing is."""
    if _is_array(expected):
        if not _is_array(got):
            return f"{name} is {_describe(got)} but should be {_describe(expected)}"
        return _compare_arrays(name, got, expected, rtol, atol)
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            return f"{name} is {_describe(got)} but should be a dict with keys {sorted(map(str, expected))}"
        if set(got) != set(expected):
            missing, extra = sorted(map(str, set(expected) - set(got))), sorted(map(str, set(got) - set(expected)))
            return f"{name} has keys {sorted(map(str, got))}" + (f"; missing {missing}" if missing else "") + \
                (f"; unexpected {extra}" if extra else "")
        items = [(f"{name}[{k!r}]", got[k], expected[k]) for k in expected]
    elif isinstance(expected, Sequence) and not isinstance(expected, str):
        if not isinstance(got, Sequence) or isinstance(got, str):
            return f"{name} is {_describe(got)} but should be a {type(expected).__name__} of {len(expected)} items"
        if len(got) != len(expected):
            return f"{name} has {len(got)} items but should have {len(expected)}"
        fields = getattr(expected, "_fields", None)  # a named tuple: name its items by field
        labels = [f"{name}.{f}" for f in fields] if fields else [f"{name}[{i}]" for i in range(len(expected))]
        items = list(zip(labels, got, expected))
    else:
        return None if got == expected else f"{name} is {got!r} but should be {expected!r}"
    for label, g, e in items:
        problem = difference(g, e, label, rtol=rtol, atol=atol)
        if problem:
            return problem
    return None


def check(name: str, got: Any, expected: Any, *, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Print ``✓ name: correct`` if ``got`` matches ``expected``, else raise ``ExerciseError`` saying why."""
    problem = difference(got, expected, name, rtol=rtol, atol=atol)
    if problem:
        raise ExerciseError(f"✗ {problem}")
    print(f"✓ {name}: correct")


def check_shape(name: str, got: torch.Tensor | np.ndarray, shape: Sequence[int | None]) -> None:
    """Check only the shape of ``got``; ``None`` in ``shape`` accepts any size in that dimension."""
    actual = tuple(got.shape)
    expected = tuple(shape)
    wrong = len(actual) != len(expected) or any(e is not None and a != e for a, e in zip(actual, expected))
    if wrong:
        sizes = ["any" if e is None else str(e) for e in expected]
        shown = f"({sizes[0]},)" if len(sizes) == 1 else f"({', '.join(sizes)})"
        raise ExerciseError(f"✗ {name} has shape {actual} but should have shape {shown}")
    print(f"✓ {name}: correct shape {actual}")


def check_function(name: str, fn: Callable, reference: Callable, inputs: Sequence[Any], *,
                   rtol: float = RTOL, atol: float = ATOL) -> None:
    """Call ``fn`` and ``reference`` on each input (a tuple of arguments, or one argument) and compare.

    The message of a wrong answer names the input it failed on. Errors raised by ``fn`` (for example
    the ``NotImplementedError`` of an exercise not done yet) propagate unchanged.
    """
    if not inputs:
        raise ValueError("check_function needs at least one input")
    for i, args in enumerate(inputs):
        args = args if isinstance(args, tuple) else (args,)
        problem = difference(fn(*args), reference(*args), f"{name}(...)", rtol=rtol, atol=atol)
        if problem:
            shown = ", ".join(_describe(a) for a in args)
            raise ExerciseError(f"✗ on input {i + 1} of {len(inputs)} ({shown}): {problem}")
    print(f"✓ {name}: correct on {len(inputs)} input{'s' if len(inputs) > 1 else ''}")
