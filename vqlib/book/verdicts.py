"""Words that depend on numbers: a chapter's "better", "wins" or "no clear difference" is computed
from a measured interval (``vqlib.core.metrics.Interval``), never typed.

- ``verdict(interval, above, below)``: ``above`` when the whole interval lies above zero, ``below``
  when it lies below, else "no clear difference" (or the ``within`` given).
- ``ranked(a, b, interval, ...)``: a short sentence naming the winner, or saying there is none.
- ``against_target(interval, target)``: "meets the target", "misses the target", or "is within
  noise of the target" when the interval contains it.
"""

from __future__ import annotations

from vqlib.core.metrics import Interval

NO_CLEAR_DIFFERENCE = "no clear difference"


def verdict(interval: Interval, above: str, below: str, within: str = NO_CLEAR_DIFFERENCE) -> str:
    """The word for a measured difference: ``above`` if all of ``interval`` lies above 0, ``below``
    if all of it lies below 0, else ``within``."""
    if not isinstance(interval, Interval):
        raise TypeError(f"verdict needs an Interval (bootstrap_ci or seed_ci), got {type(interval).__name__}")
    return {1: above, -1: below, 0: within}[interval.sign]


def ranked(first: str, second: str, interval: Interval, higher: str = "higher", spec: str = ".2f",
           unit: str = "") -> str:
    """"A scores higher than B by 0.42 dB (95% interval 0.10 to 0.73)", with the names swapped when
    the difference (first - second) is negative, or "A and B show no clear difference: ..." when
    the interval contains 0."""
    if interval.sign == 0:
        return f"{first} and {second} show {NO_CLEAR_DIFFERENCE} ({first} − {second}: {interval.text(spec, unit)})"
    winner, loser, margin = (first, second, interval) if interval.sign > 0 else (second, first, -interval)
    return f"{winner} scores {higher} than {loser} by {margin.text(spec, unit)}"


def against_target(interval: Interval, target: float, meets: str = "meets the target",
                   misses: str = "misses the target", within: str = "is within noise of the target") -> str:
    """``meets`` if all of ``interval`` lies at or above ``target``, ``misses`` if all of it lies below,
    else ``within``."""
    if not isinstance(interval, Interval):
        raise TypeError(f"against_target needs an Interval (bootstrap_ci), got {type(interval).__name__}")
    return meets if interval.low >= target else misses if interval.high < target else within
