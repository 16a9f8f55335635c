"""Residual VQ, l2-normalised factorized codes and the rotation trick against brute-force references."""

import pytest
import torch
import torch.nn.functional as F

from vqlib.quantizers.factorized import FactorizedQuantizer
from vqlib.quantizers.residual import ResidualVectorQuantizer
from vqlib.quantizers.rotation import RotationTrickQuantizer, rotation_trick
from vqlib.quantizers.vector import EMAVectorQuantizer, VectorQuantizer, straight_through

EXACT = "donot_use_mm_for_euclid_dist"


def rows(z: torch.Tensor) -> torch.Tensor:
    """(B, D, ...) -> (N, D), written independently of the library."""
    return torch.stack([z[:, d].reshape(-1) for d in range(z.shape[1])], dim=1)


# ----------------------------------------------------------------------------- residual VQ

def test_residual_vq_is_repeated_nearest_code_on_the_residuals():
    q = ResidualVectorQuantizer(num_stages=3, codebook_size=6, code_dim=4).eval()
    with torch.no_grad():
        for scale, stage in zip((1.0, 0.5, 0.25), q.stages):
            stage.codebook.copy_(scale * torch.randn(6, 4))  # distinct codes, no ties; each stage finer
    z_e = torch.randn(2, 4, 3, 5)
    out = q(z_e)
    residual, total = rows(z_e), torch.zeros(30, 4)
    for s, stage in enumerate(q.stages):
        k = torch.cdist(residual, stage.codebook, compute_mode=EXACT).argmin(dim=1)  # (N,) brute force
        assert torch.equal(out.indices[:, s].flatten(), k)
        residual, total = residual - stage.codebook[k], total + stage.codebook[k]
    torch.testing.assert_close(rows(out.z_q), total)


def test_residual_vq_error_shrinks_with_every_stage():
    torch.manual_seed(0)
    z_e = torch.randn(8, 3, 4, 4)
    errors = []
    for stages in (1, 2, 3):
        torch.manual_seed(1)
        q = ResidualVectorQuantizer(num_stages=stages, codebook_size=16, code_dim=3)
        for _ in range(20):
            q(z_e)
        errors.append(F.mse_loss(q.eval()(z_e).z_q, z_e).item())
    assert errors[0] > errors[1] > errors[2]


def test_residual_vq_loss_is_rq_vae_commitment_to_the_partial_sums():
    beta = 0.4
    q = ResidualVectorQuantizer(num_stages=2, codebook_size=5, code_dim=3, beta=beta)
    q(torch.randn(2, 3, 4, 4))
    q.eval()
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = q(z_e)
    partial = torch.zeros_like(z_e)
    expected = 0
    for s, stage in enumerate(q.stages):
        partial = partial + stage.decode_indices(out.indices[:, s])  # Ẑ^(s)
        expected = expected + beta * F.mse_loss(z_e, partial)  # beta·||z - sg[Ẑ^(s)]||², as a mean
    torch.testing.assert_close(out.loss, expected)
    g = torch.randn_like(z_e)
    (grad,) = torch.autograd.grad(out.z_q, z_e, g)
    assert torch.equal(grad, g)  # straight through from the sum of the codes


def test_residual_vq_bad_settings_and_indices():
    with pytest.raises(ValueError, match="num_stages"):
        ResidualVectorQuantizer(num_stages=0, codebook_size=4, code_dim=2)
    q = ResidualVectorQuantizer(num_stages=2, codebook_size=4, code_dim=2)
    with pytest.raises(ValueError, match="S=2 stages"):
        q.decode_indices(torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        q.decode_indices(torch.full((1, 2, 3, 3), 4))


# ----------------------------------------------------------------------------- factorized l2 codes

def test_factorized_codes_are_the_largest_cosine_similarity():
    q = FactorizedQuantizer(codebook_size=12, code_dim=5, low_dim=3)
    z_e = torch.randn(2, 5, 4, 3)
    out = q(z_e)
    z = rows(z_e) @ q.project_in.weight.t() + q.project_in.bias  # (N, d), not normalised
    cosine = F.cosine_similarity(z[:, None], q.codebook.detach()[None], dim=-1)  # (N, K)
    assert torch.equal(out.indices.flatten(), cosine.argmax(dim=1))


def test_factorized_loss_and_codebook_gradient_on_the_sphere():
    beta = 0.25
    q = FactorizedQuantizer(codebook_size=6, code_dim=4, low_dim=2, beta=beta)
    z_e = torch.randn(2, 4, 3, 3)
    out = q(z_e)
    z = F.normalize(rows(z_e) @ q.project_in.weight.t() + q.project_in.bias, dim=1).detach()
    codebook = q.codebook.detach().clone().requires_grad_()
    e = F.normalize(codebook, dim=1)[out.indices.flatten()]
    expected = F.mse_loss(e, z) + beta * F.mse_loss(z, e.detach())
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    expected.backward()
    torch.testing.assert_close(q.codebook.grad, codebook.grad)  # the codebook learns through the normalisation


def test_factorized_bad_low_dim():
    with pytest.raises(ValueError, match="low_dim"):
        FactorizedQuantizer(codebook_size=6, code_dim=4, low_dim=0)


# ----------------------------------------------------------------------------- rotation trick

def rotation_matrix(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The paper's R = I - 2 r rᵀ + 2 q̂ êᵀ for one pair of vectors, as an explicit (D, D) matrix."""
    e_hat, q_hat = e / e.norm(), q / q.norm()
    r = (e_hat + q_hat) / (e_hat + q_hat).norm()
    return torch.eye(len(e), dtype=e.dtype) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)


def test_rotation_matrix_is_a_rotation_that_takes_e_to_q():  # the reference itself, checked
    e, q = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    R = rotation_matrix(e, q)
    torch.testing.assert_close(R @ R.T, torch.eye(5, dtype=torch.float64))
    assert torch.linalg.det(R) == pytest.approx(1.0)
    torch.testing.assert_close(q.norm() / e.norm() * R @ e, q)


@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (2, 4, 2, 3, 3)])
def test_rotation_trick_forward_is_z_q_and_gradient_is_the_rotated_scaled_gradient(shape):
    z_e = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    z_q = torch.randn(shape, dtype=torch.float64)
    out = rotation_trick(z_e, z_q)
    assert torch.equal(out, z_q)
    g = torch.randn(shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, z_e, g)
    e, q, g_rows = rows(z_e.detach()), rows(z_q), rows(g)
    expected = torch.stack([q[i].norm() / e[i].norm() * rotation_matrix(e[i], q[i]).T @ g_rows[i] for i in range(len(e))])
    torch.testing.assert_close(rows(grad), expected)


def test_rotation_trick_matches_vector_quantize_pytorch():
    vqp = pytest.importorskip("vector_quantize_pytorch.vector_quantize_pytorch")
    e = torch.randn(20, 6, dtype=torch.float64, requires_grad=True)
    q = torch.randn(20, 6, dtype=torch.float64)
    theirs = vqp.rotate_to(e, q)
    g = torch.randn(20, 6, dtype=torch.float64)
    (grad_theirs,) = torch.autograd.grad(theirs, e, g)
    ours = rotation_trick(e[:, :, None, None], q[:, :, None, None])  # (N, D, 1, 1) as an image batch
    (grad_ours,) = torch.autograd.grad(ours, e, g[:, :, None, None])
    torch.testing.assert_close(ours[:, :, 0, 0], theirs.detach())
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_rotation_trick_is_finite_when_e_and_q_point_opposite_ways():
    z_e = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).requires_grad_()
    z_q = -3 * z_e.detach()
    out = rotation_trick(z_e, z_q)
    (grad,) = torch.autograd.grad(out, z_e, torch.ones_like(out))
    assert torch.isfinite(grad).all() and torch.equal(out, z_q)


def test_rotation_trick_quantizer_keeps_codes_losses_and_indices():
    inner = VectorQuantizer(8, 3)
    q = RotationTrickQuantizer(inner)
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    out, ref = q(z_e), inner(z_e)
    assert torch.equal(out.indices, ref.indices) and torch.equal(out.z_q, ref.z_q)
    torch.testing.assert_close(out.loss, ref.loss)
    g = torch.randn_like(z_e)
    (grad,) = torch.autograd.grad(out.z_q, z_e, g, retain_graph=True)
    (st,) = torch.autograd.grad(straight_through(z_e, ref.z_q.detach()), z_e, g)
    assert not torch.allclose(grad, st)  # not the straight-through gradient
    assert q.codebook_size == 8 and q.code_dim == 3


def test_rotation_trick_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        rotation_trick(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5))
    with pytest.raises(TypeError, match="decode_indices"):
        RotationTrickQuantizer(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="code_dim=3"):
        RotationTrickQuantizer(EMAVectorQuantizer(4, 3))(torch.randn(2, 5, 4, 4))
