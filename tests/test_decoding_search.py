"""Chapter 7's choice of sampler settings: ``grid_search`` scores a product of axes, widens an axis
whose best value lies on its edge, and ``inside`` says whether the best lies strictly inside."""

import itertools
import math

import pytest

from vqlib.recipes.ch07_maskgit import decoding_grid, grid_search, inside


def bowl(at: dict[str, float]):
    """A score whose minimum is at ``at``: squared log-distance on every axis, and a count of calls."""
    calls = []

    def score(**setting):
        calls.append(setting)
        return {"fd": sum(math.log(setting[k] / v) ** 2 for k, v in at.items()), "accuracy": 0.0}

    return score, calls


def test_without_widening_it_is_the_argmin_over_the_product():
    axes = {"a": (1.0, 2.0, 4.0), "b": (0.5, 1.0)}
    score, calls = bowl({"a": 2.2, "b": 3.0})
    best, tried = grid_search(axes, score)
    assert len(calls) == len(tried) == 6 and set(tried) == set(itertools.product(*axes.values()))
    brute = min(itertools.product(*axes.values()), key=lambda s: score(a=s[0], b=s[1])["fd"])
    assert best == dict(zip(axes, brute)) == {"a": 2.0, "b": 1.0}
    assert inside(tried, best, "a") and not inside(tried, best, "b")


@pytest.mark.parametrize("optimum, expected", [(8.0, 8.0), (0.1, 0.125)])
def test_an_axis_is_widened_past_its_edge_until_the_best_is_inside(optimum, expected):
    score, calls = bowl({"t": optimum})
    best, tried = grid_search({"t": (0.5, 1.0, 2.0), "s": ("x", "y")}, score, widen=("t",))
    assert best["t"] == pytest.approx(expected) and inside(tried, best, "t")
    assert len(calls) == len(tried), "every setting is scored once"


def test_widening_stops_after_max_rounds_and_other_axes_stay_as_they_are():
    score, _ = bowl({"t": 100.0, "b": 1.0})
    best, tried = grid_search({"t": (1.0, 2.0), "b": (1.0, 3.0)}, score, widen=("t",), max_rounds=2)
    assert best == {"t": 8.0, "b": 1.0} and not inside(tried, best, "t")
    assert {s for s in tried if s[0] > 2} == {(4.0, 1.0), (8.0, 1.0)}  # along the best line only


def test_bad_axes_get_a_clear_error():
    score, _ = bowl({"t": 1.0})
    with pytest.raises(ValueError, match="widen names axes"):
        grid_search({"t": (1.0, 2.0)}, score, widen=("tau",))
    with pytest.raises(ValueError, match="widen names axes"):
        grid_search({"t": (1.0,)}, score, widen=("t",))
    with pytest.raises(ValueError, match="positive"):
        grid_search({"t": (0.0, 1.0)}, score, widen=("t",))


def test_the_chapter_grid_is_the_same_kind_for_both_priors_in_every_profile():
    for profile in ("smoke", "quick", "full"):
        grid = decoding_grid(profile)
        assert len(grid.gpt_temperatures) >= 2 and len(grid.choice_temperatures) >= 2
        assert None in grid.gpt_top_ks and min(grid.steps) >= 1 and grid.samples >= 2


@pytest.mark.parametrize("optimum, expected, is_inside", [(16.0, 16, True), (1.0, 1, False)])
def test_an_axis_of_integers_is_widened_by_whole_numbers_and_not_below_one(optimum, expected, is_inside):
    score, calls = bowl({"steps": optimum})
    best, tried = grid_search({"steps": (2, 4)}, score, widen=("steps",))
    assert best["steps"] == expected and isinstance(best["steps"], int)
    assert inside(tried, best, "steps") == is_inside and len(calls) == len(tried)


def test_two_axes_are_widened_together_and_each_new_line_is_filled_with_its_grid():
    score, calls = bowl({"t": 8.0, "s": 0.125})
    best, tried = grid_search({"t": (1.0, 2.0), "s": (1.0, 2.0)}, score, widen=("t", "s"), max_rounds=8)
    assert best == {"t": 8.0, "s": 0.125} and inside(tried, best, "t") and inside(tried, best, "s")
    assert len(calls) == len(tried)
