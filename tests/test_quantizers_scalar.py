"""FSQ and LFQ (vqlib.quantizers.fsq, vqlib.quantizers.lfq) against their papers' formulas, computed directly."""

import itertools
import math

import pytest
import torch

from vqlib.quantizers.fsq import FiniteScalarQuantizer
from vqlib.quantizers.lfq import LookupFreeQuantizer


def low(q, z_e: torch.Tensor) -> torch.Tensor:
    """The projected vectors (N, d) that the quantizer sees, computed independently."""
    return z_e.movedim(1, -1).reshape(-1, z_e.shape[1]) @ q.project_in.weight.t() + q.project_in.bias


# ----------------------------------------------------------------------------- FSQ

def paper_bound(z: float, levels: int, eps: float = 1e-3) -> float:
    """Appendix A.1 of Mentzer et al. (2023), for one scalar."""
    half_l = (levels - 1) * (1 - eps) / 2
    offset = 0.5 if levels % 2 == 0 else 0.0
    return math.tanh(z + math.tan(offset / half_l)) * half_l - offset


@pytest.mark.parametrize("levels", [(8, 6, 5), (3, 4, 2, 7)])
def test_fsq_rounds_the_papers_bound(levels):
    q = FiniteScalarQuantizer(levels, code_dim=5)
    z = torch.randn(50, len(levels), dtype=torch.float64) * 2
    expected = torch.tensor([[round(paper_bound(v, levels[i])) / (levels[i] // 2) for i, v in enumerate(row)]
                             for row in z.tolist()], dtype=torch.float64)
    torch.testing.assert_close(q.quantize(z), expected)


@pytest.mark.parametrize("level", [2, 3, 4, 5, 8])
def test_each_fsq_dimension_takes_exactly_L_values(level):
    q = FiniteScalarQuantizer((level,), code_dim=1)
    values = q.quantize(torch.linspace(-20, 20, 100_001)[:, None]).unique()
    assert len(values) == level
    half = level // 2
    torch.testing.assert_close(values, (torch.arange(level) - half).float() / half)  # -L/2 .. L/2 - 1 for even L


def test_fsq_index_and_code_are_a_bijection():
    q = FiniteScalarQuantizer((3, 4, 2), code_dim=2)
    codes = q.implicit_codebook  # (K, d)
    assert codes.shape == (24, 3) and len(codes.unique(dim=0)) == 24
    assert torch.equal(q.codes_to_indices(codes), torch.arange(24))
    grid = torch.tensor(list(itertools.product(*[range(level) for level in (3, 4, 2)])))  # every digit tuple
    assert {tuple(r) for r in torch.round(codes * q._half_width + q._half_width).long().tolist()} == \
        {tuple(r) for r in grid.tolist()}


def test_fsq_index_is_the_nearest_implicit_code_of_the_bounded_vector():
    q = FiniteScalarQuantizer((8, 6, 5), code_dim=4)
    z_e = torch.randn(3, 4, 5, 5) * 3
    out = q(z_e)
    bounded = q.bound(low(q, z_e)) / q._half_width  # (N, d), before rounding
    nearest = torch.cdist(bounded, q.implicit_codebook).argmin(dim=1)  # brute force over all 240 codes
    assert q.codebook_size == 240
    assert torch.equal(out.indices.flatten(), nearest)
    assert out.loss == 0


def test_fsq_gradient_is_straight_through_the_rounding():
    q = FiniteScalarQuantizer((5, 4), code_dim=2)
    z = torch.randn(10, 2, dtype=torch.float64, requires_grad=True)
    q.quantize(z).sum().backward()
    bounded = torch.func.vmap(torch.func.grad(lambda v: q.bound(v).sum()))(z.detach())  # d bound / dz
    torch.testing.assert_close(z.grad, bounded / q._half_width.double())


@pytest.mark.parametrize("levels", [(), (1, 4), (2.5,), (0,)])
def test_fsq_bad_levels(levels):
    with pytest.raises(ValueError, match="levels"):
        FiniteScalarQuantizer(levels, code_dim=3)


# ----------------------------------------------------------------------------- LFQ

def test_lfq_codes_are_signs_and_indices_are_binary_numbers():
    q = LookupFreeQuantizer(bits=5, code_dim=3).eval()
    z_e = torch.randn(2, 3, 4, 4)
    out = q(z_e)
    z = low(q, z_e)
    signs = torch.where(z > 0, 1.0, -1.0)  # (N, d): sign, with 0 -> -1
    expected = torch.tensor([sum(2**i for i in range(5) if v[i] > 0) for v in z.tolist()])
    assert torch.equal(out.indices.flatten(), expected)
    torch.testing.assert_close(q.indices_to_codes(out.indices.flatten()), signs)
    torch.testing.assert_close(out.z_q.movedim(1, -1).reshape(-1, 3), signs @ q.project_out.weight.t() + q.project_out.bias)


@pytest.mark.parametrize("bits", [1, 4, 5])  # one half empty, equal halves, unequal halves
def test_lfq_entropy_terms_equal_a_softmax_over_the_explicit_codebook(bits):
    tau = 0.7
    q = LookupFreeQuantizer(bits=bits, code_dim=3, tau=tau).double()
    z = torch.randn(40, bits, dtype=torch.float64)
    codebook = q.indices_to_codes(torch.arange(2 ** bits)).double()  # (K, d) row k is code k
    assert len(set(map(tuple, codebook.tolist()))) == 2 ** bits == len(list(itertools.product([-1, 1], repeat=bits)))
    p = torch.softmax(-torch.cdist(z, codebook) ** 2 / tau, dim=1)  # (N, K) p(c | z)
    entropy = lambda probs: -(probs * probs.log()).sum(-1)  # noqa: E731
    per_sample, batch = q.entropy_terms(z)
    torch.testing.assert_close(per_sample, entropy(p).mean().float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch, entropy(p.mean(0)).float(), rtol=1e-5, atol=1e-6)


def test_lfq_loss_is_commitment_plus_weighted_entropy_penalty():
    q = LookupFreeQuantizer(bits=3, code_dim=4, beta=0.3, entropy_weight=0.2)
    z_e = torch.randn(2, 4, 3, 3)
    z = low(q, z_e)
    per_sample, batch = q.entropy_terms(z)
    expected = 0.3 * ((z - torch.where(z > 0, 1.0, -1.0)) ** 2).mean() + 0.2 * (per_sample - batch)
    torch.testing.assert_close(q(z_e).loss, expected)


def test_lfq_entropy_penalty_is_lowest_for_confident_spread_out_codes():
    q = LookupFreeQuantizer(bits=2, code_dim=2, tau=0.1)
    spread = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])  # one vector per code
    per_sample, batch = q.entropy_terms(spread)
    assert per_sample < 1e-6 and batch == pytest.approx(math.log(4), rel=1e-5)
    per_sample, batch = q.entropy_terms(torch.ones(4, 2))  # all in one code: no batch entropy
    assert batch < 1e-6


@pytest.mark.parametrize("kwargs", [dict(bits=0), dict(bits=13), dict(bits=3, tau=0.0), dict(bits=3, beta=-1.0)])
def test_lfq_bad_settings(kwargs):
    with pytest.raises(ValueError):
        LookupFreeQuantizer(code_dim=3, **kwargs)
