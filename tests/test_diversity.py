"""group_spread, the diversity score of vqlib.core.metrics: a brute-force check and bad input."""

import itertools

import pytest
import torch

from vqlib.core.metrics import group_spread


def test_group_spread_equals_the_mean_over_pairs_by_hand():
    torch.manual_seed(0)
    feats = torch.randn(9, 4, dtype=torch.float64)
    groups = torch.tensor([2, 0, 2, 2, 0, 5, 0, 0, 7])  # group 5 and 7 have one item: left out
    labels, spread = group_spread(feats, groups)
    assert labels.tolist() == [0, 2]
    for label, value in zip(labels.tolist(), spread.tolist()):
        rows = [i for i, g in enumerate(groups.tolist()) if g == label]
        pairs = [(feats[i] - feats[j]).norm().item() for i, j in itertools.combinations(rows, 2)]
        assert value == pytest.approx(sum(pairs) / len(pairs), rel=1e-9)


def test_identical_samples_have_no_spread():
    labels, spread = group_spread(torch.ones(4, 3), torch.tensor([1, 1, 1, 1]))
    assert labels.tolist() == [1] and spread.tolist() == [0.0]


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="one group label per row"):
        group_spread(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.long"):
        group_spread(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        group_spread(torch.tensor([[0.0], [float("nan")]]), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="needs pairs"):
        group_spread(torch.zeros(3, 2), torch.arange(3))
