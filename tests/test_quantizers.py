"""vqlib.quantizers.vector against brute force and hand-computed formulas, on tiny shapes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqlib.quantizers.vector import (EMAVectorQuantizer, QuantizerOutput, VectorQuantizer, kmeans, lloyd_step,
                                     nearest_code, straight_through, straight_through_with_loss)

QUANTIZERS = [VectorQuantizer, EMAVectorQuantizer]
EXACT = "donot_use_mm_for_euclid_dist"  # cdist by differences, not by the expanded square
SHAPES = [(3, 4, 5, 6), (2, 4, 3, 5, 4)]  # image (B, D, H, W) and video (B, D, T, H, W)


def rows(z: torch.Tensor) -> torch.Tensor:
    """(B, D, ...) -> (N, D), written independently of the library."""
    return torch.stack([z[:, d].reshape(-1) for d in range(z.shape[1])], dim=1)


def codes_at(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The code vectors of ``indices``, channels first, by plain indexing."""
    return codebook[indices].movedim(-1, 1)


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- nearest code

@pytest.mark.parametrize("cls", QUANTIZERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_nearest_code_is_brute_force_argmin(cls, shape):
    q = cls(codebook_size=7, code_dim=4)
    z_e = torch.randn(shape)
    codebook = q.codebook.detach().clone()  # the EMA codebook moves after a training step
    out = q(z_e)
    assert isinstance(out, QuantizerOutput)
    expected = torch.cdist(rows(z_e), codebook, compute_mode=EXACT).argmin(dim=1)  # (N,)
    assert out.indices.dtype == torch.long
    assert out.indices.shape == shape[:1] + shape[2:]
    assert torch.equal(out.indices.flatten(), expected)
    torch.testing.assert_close(out.z_q, codes_at(codebook, out.indices))


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_distances_stay_float32_under_autocast(cls):
    # Codes 1 and 1 + 2^-10 are equal in bfloat16 (8-bit mantissa): a bfloat16 argmin would tie
    # and pick code 0, the float32 one picks code 1, the exact nearest.
    q = cls(codebook_size=2, code_dim=4).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[1.0] * 4, [1.0 + 2**-10] * 4]))
    z_e = torch.full((1, 4, 1, 1), 1.0 + 2**-10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert q(z_e).indices.item() == 1


@pytest.mark.parametrize("cls", QUANTIZERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_decode_indices_returns_the_codes(cls, shape):
    q = cls(codebook_size=7, code_dim=4).eval()
    out = q(torch.randn(shape))
    decoded = q.decode_indices(out.indices)
    assert decoded.shape == shape
    assert torch.equal(decoded, out.z_q)


# ----------------------------------------------------------------------------- gradients and losses

def test_straight_through_passes_the_gradient_unchanged():
    z_e, z_q = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4)
    out = straight_through(z_e, z_q)
    assert torch.equal(out, z_q)
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(z_e.grad, g)


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_gradient_of_z_e_equals_gradient_of_z_q(cls):
    q = cls(codebook_size=5, code_dim=3)
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = q(z_e)
    g = torch.randn_like(out.z_q)
    out.z_q.backward(g)  # the decoder's gradient only, no quantizer loss
    assert torch.equal(z_e.grad, g)


def test_vq_loss_puts_beta_on_the_commitment_term():
    beta = 0.1
    q = VectorQuantizer(codebook_size=6, code_dim=3, beta=beta)
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = q(z_e)
    z_q = codes_at(q.codebook.detach(), out.indices)
    torch.testing.assert_close(out.loss, (1 + beta) * ((z_q - z_e.detach()) ** 2).mean())
    out.loss.backward()
    m = z_e.numel()
    # commitment term beta·mse(z_e, sg[z_q]) is the only one reaching z_e ...
    torch.testing.assert_close(z_e.grad, beta * 2 * (z_e.detach() - z_q) / m)
    # ... and the codebook term mse(sg[z_e], z_q), with weight 1, the only one reaching the codebook
    expected = torch.zeros_like(q.codebook)
    expected.index_add_(0, out.indices.flatten(), rows(2 * (z_q - z_e.detach()) / m))
    torch.testing.assert_close(q.codebook.grad, expected)


def test_ema_loss_is_beta_times_commitment():
    beta = 0.3
    q = EMAVectorQuantizer(codebook_size=6, code_dim=3, beta=beta).eval()
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = q(z_e)
    z_q = codes_at(q.codebook, out.indices)
    torch.testing.assert_close(out.loss, beta * F.mse_loss(z_e.detach(), z_q))
    out.loss.backward()
    torch.testing.assert_close(z_e.grad, beta * 2 * (z_e.detach() - z_q) / z_e.numel())
    assert not q.codebook.requires_grad  # a buffer: no gradient ever reaches it


def test_fused_straight_through_and_loss_equal_autograd_on_the_textbook_formula():
    z_e = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    codes = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    g, w = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64)
    z_q, loss = straight_through_with_loss(z_e, codes, 1.0, 0.25)
    torch.autograd.backward((z_q, loss), (g, w))
    fused = z_e.grad.clone(), codes.grad.clone()
    z_e.grad = codes.grad = None
    ref_loss = F.mse_loss(codes, z_e.detach()) + 0.25 * F.mse_loss(z_e, codes.detach())
    torch.autograd.backward((z_e + (codes - z_e).detach(), ref_loss), (g, w))
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(fused, (z_e.grad, codes.grad))


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_gradients_reach_the_encoder_through_the_quantizer(cls):
    encoder = nn.Conv2d(1, 4, kernel_size=3, padding=1)
    q = cls(codebook_size=8, code_dim=4)
    out = q(encoder(torch.randn(2, 1, 6, 6)))
    (out.z_q.pow(2).mean() + out.loss).backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- EMA state

def test_ema_step_equals_the_formula_by_hand():
    k, d, decay, eps = 4, 2, 0.9, 1e-5
    q = EMAVectorQuantizer(k, d, decay=decay, eps=eps, data_init=False, restart_threshold=0)
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0], [5.0, 5.0]])
    with torch.no_grad():
        q.codebook.copy_(codebook)
        q.embed_sum.copy_(codebook)  # N_k = 1 for every code, as at construction
    z_e = torch.tensor([[0.1, 0.9, -0.8, 0.2], [-0.1, 1.2, 2.1, 0.0]]).view(1, 2, 2, 2)  # vectors (0.1,-0.1) (0.9,1.2) (-0.8,2.1) (0.2,0)
    vectors = torch.tensor([[0.1, -0.1], [0.9, 1.2], [-0.8, 2.1], [0.2, 0.0]])
    assign = torch.tensor([0, 1, 2, 0])
    assert torch.equal(q(z_e).indices.flatten(), assign)
    n = torch.tensor([2.0, 1.0, 1.0, 0.0])  # vectors per code
    s = torch.stack([vectors[assign == j].sum(0) for j in range(k)])  # their sums
    big_n = decay * torch.ones(k) + (1 - decay) * n
    m = decay * codebook + (1 - decay) * s
    smoothed = (big_n + eps) / (big_n.sum() + k * eps) * big_n.sum()
    torch.testing.assert_close(q.cluster_size, big_n)
    torch.testing.assert_close(q.embed_sum, m)
    torch.testing.assert_close(q.codebook, m / smoothed[:, None])


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_eval_changes_no_buffer(cls):
    q = cls(codebook_size=8, code_dim=3)
    q(torch.randn(2, 3, 4, 4))  # initialise in training mode
    before = state(q)
    q.eval()
    for _ in range(3):
        q(torch.randn(2, 3, 4, 4) * 10)
    after = state(q)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_moves_the_ema_buffers():  # the converse: otherwise the test above proves nothing
    q = EMAVectorQuantizer(codebook_size=8, code_dim=3)
    q(torch.randn(2, 3, 4, 4))
    before = state(q)
    q(torch.randn(2, 3, 4, 4))
    assert not torch.equal(before["codebook"], q.codebook)
    assert not torch.equal(before["cluster_size"], q.cluster_size)


def test_data_init_seeds_every_code_from_the_first_batch():
    q = EMAVectorQuantizer(codebook_size=16, code_dim=3)
    z_e = torch.randn(2, 3, 4, 4) + 100  # far from the random initial codes
    assert not q.initialized
    q.eval()(z_e)
    assert not q.initialized  # eval never initialises
    q.train()(z_e)
    assert q.initialized
    distance = torch.cdist(q.codebook, rows(z_e), compute_mode=EXACT).min(dim=1).values  # (K,) to the nearest batch vector
    torch.testing.assert_close(distance, torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(q.cluster_size, torch.ones(16))


def test_dead_code_is_restarted_from_an_encoder_output_and_live_codes_are_not():
    q = EMAVectorQuantizer(codebook_size=4, code_dim=2, data_init=False, restart_threshold=1.0)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [3.0, 3.0], [-3.0, 3.0], [1e3, 1e3]]))
        q.embed_sum.copy_(q.codebook)
    z_e = torch.randn(8, 2, 3, 3) * 0.3
    z_e[:4] += torch.tensor([3.0, 3.0]).view(1, 2, 1, 1)
    z_e[4:] += torch.tensor([-3.0, 3.0]).view(1, 2, 1, 1)  # codes 1 and 2 used 36 times each; 0 and 3 dead
    q(z_e)
    live = q.cluster_size[1:3]
    assert (live > 1).all()
    distance = torch.cdist(q.codebook, rows(z_e), compute_mode=EXACT).min(dim=1).values
    assert distance[0] < 1e-4 and distance[3] < 1e-4  # dead codes now sit on encoder outputs
    assert distance[1] > 1e-3 and distance[2] > 1e-3  # live codes are EMA averages, not samples
    torch.testing.assert_close(q.cluster_size[[0, 3]], torch.ones(2))


def test_without_restarts_a_dead_code_stays_dead():
    q = EMAVectorQuantizer(codebook_size=3, code_dim=2, data_init=False, restart_threshold=0)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [1e3, 1e3]]))
        q.embed_sum.copy_(q.codebook)
    for _ in range(5):
        q(torch.randn(4, 2, 3, 3))
    assert q.codebook[2].norm() > 500


def test_save_load_round_trip_gives_the_same_output_and_state():
    q = EMAVectorQuantizer(codebook_size=8, code_dim=3)
    for _ in range(3):
        q(torch.randn(4, 3, 4, 4))
    copy = EMAVectorQuantizer(codebook_size=8, code_dim=3)
    copy.load_state_dict(q.state_dict())
    assert copy.initialized
    z_e = torch.randn(4, 3, 4, 4)
    torch.manual_seed(1)
    a = q(z_e)
    torch.manual_seed(1)
    b = copy(z_e)  # a training step after loading continues exactly, no second initialisation
    assert torch.equal(a.indices, b.indices) and torch.equal(a.z_q, b.z_q)
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in q.state_dict().items())


def test_vq_save_load_round_trip():
    q = VectorQuantizer(codebook_size=8, code_dim=3)
    copy = VectorQuantizer(codebook_size=8, code_dim=3)
    copy.load_state_dict(q.state_dict())
    z_e = torch.randn(2, 3, 4, 4)
    assert torch.equal(q(z_e).z_q, copy(z_e).z_q)


@pytest.mark.parametrize("cls", QUANTIZERS)
def test_overfit_one_batch(cls):
    # A free "encoder output" and the codebook learn to meet: 100 steps cut the loss 10-fold.
    torch.manual_seed(0)
    z_e = nn.Parameter(torch.randn(4, 3, 4, 4))
    q = cls(codebook_size=16, code_dim=3)
    opt = torch.optim.Adam([z_e, *q.parameters()], lr=0.05)
    first = q(z_e).loss.item()
    for _ in range(100):
        loss = q(z_e).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("cls", QUANTIZERS)
@pytest.mark.parametrize("z_e, error, words", [
    (torch.randn(2, 5, 4, 4), ValueError, "code_dim=3"),
    (torch.randn(2, 3, 4), ValueError, "(B, D, H, W)"),
    (torch.randn(2, 3, 4, 4, 4, 4), ValueError, "6 dims"),
    (torch.randn(0, 3, 4, 4), ValueError, "empty"),
    (torch.randint(0, 5, (2, 3, 4, 4)), TypeError, "floating-point"),
    (torch.randn(2, 3, 4, 4, dtype=torch.complex64), TypeError, "floating-point"),
    ([[1.0]], TypeError, "torch.Tensor"),
])
def test_bad_latents(cls, z_e, error, words):
    with pytest.raises(error) as info:
        cls(codebook_size=4, code_dim=3)(z_e)
    assert words in str(info.value)
    if words == "code_dim=3":
        assert "got 5 channels" in str(info.value)


@pytest.mark.parametrize("cls", QUANTIZERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latents_raise_and_leave_the_state_alone(cls, bad):
    q = cls(codebook_size=4, code_dim=3)
    before = state(q)
    z_e = torch.randn(2, 3, 4, 4)
    z_e[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match="1 NaN or inf"):
        q(z_e)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


@pytest.mark.parametrize("cls", QUANTIZERS)
@pytest.mark.parametrize("indices, error, words", [
    (torch.tensor([[[4]]]), ValueError, "[0, 4)"),
    (torch.tensor([[[-1]]]), ValueError, "[0, 4)"),
    (torch.tensor([[[1]]], dtype=torch.int32), TypeError, "torch.long"),
    (torch.tensor([[[1.0]]]), TypeError, "torch.long"),
    (torch.zeros(0, 2, 2, dtype=torch.long), ValueError, "non-empty"),
])
def test_bad_indices(cls, indices, error, words):
    with pytest.raises(error) as info:
        cls(codebook_size=4, code_dim=3).decode_indices(indices)
    assert words in str(info.value)


@pytest.mark.parametrize("cls", QUANTIZERS)
@pytest.mark.parametrize("kwargs, words", [
    (dict(codebook_size=0, code_dim=3), "codebook_size"),
    (dict(codebook_size=4, code_dim=0), "code_dim"),
    (dict(codebook_size=4, code_dim=3, beta=-1.0), "beta"),
])
def test_bad_sizes(cls, kwargs, words):
    with pytest.raises(ValueError, match=words):
        cls(**kwargs)


@pytest.mark.parametrize("kwargs, words", [(dict(decay=1.0), "decay"), (dict(restart_threshold=-1), "restart")])
def test_bad_ema_settings(kwargs, words):
    with pytest.raises(ValueError, match=words):
        EMAVectorQuantizer(4, 3, **kwargs)



def test_channels_last_latents_are_quantized_like_contiguous_ones():
    q = EMAVectorQuantizer(codebook_size=8, code_dim=4)
    z_e = torch.randn(2, 4, 3, 5)
    out = q.eval()(z_e)
    out_cl = q(z_e.to(memory_format=torch.channels_last).requires_grad_())
    torch.testing.assert_close(out_cl.z_q, out.z_q)
    torch.testing.assert_close(out_cl.loss, out.loss)
    out_cl.loss.backward()  # the fused straight-through backward also takes strided input


def test_kmeans_converges_to_a_fixed_point_that_beats_its_start():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    vectors = (centres[:, None] + torch.randn(3, 50, 2)).reshape(-1, 2)  # (150, 2)
    torch.manual_seed(1)
    start = kmeans(vectors, k=3, iters=0)  # k rows of the data
    assert all((vectors == row).all(1).any() for row in start)
    torch.manual_seed(1)
    got = kmeans(vectors, k=3, iters=50)
    assign = torch.cdist(vectors, got).argmin(1)  # brute force
    for j in range(3):  # Lloyd's fixed point: every centroid is the mean of its rows
        torch.testing.assert_close(got[j], vectors[assign == j].mean(0))
    inertia = lambda c: torch.cdist(vectors, c).min(1).values.pow(2).sum()  # noqa: E731
    assert inertia(got) < inertia(start)
    with pytest.raises(ValueError, match="iters ≥ 0"):
        kmeans(vectors, k=2, iters=-1)


def test_kmeans_step_moves_each_centroid_to_the_mean_of_its_rows():
    vectors = torch.tensor([[0.0], [1.0], [9.0], [11.0], [30.0]])
    torch.manual_seed(3)
    start = vectors[torch.randint(5, (2,))]
    torch.manual_seed(3)
    got = kmeans(vectors, k=2, iters=1)
    assign = (vectors - start.T).abs().argmin(1)  # brute force
    want = torch.stack([vectors[assign == j].mean(0) if (assign == j).any() else start[j] for j in range(2)])
    torch.testing.assert_close(got, want)


def test_lloyd_steps_from_one_start_never_raise_the_mean_squared_distance():
    torch.manual_seed(0)
    centres = 6 * torch.randn(5, 3)
    vectors = (centres[:, None] + torch.randn(5, 40, 3)).reshape(-1, 3)  # (200, 3)
    mean_sq = lambda c: torch.cdist(vectors, c).min(1).values.pow(2).mean().item()  # noqa: E731
    torch.manual_seed(4)
    start = kmeans(vectors, k=8, iters=0)
    curve, centroids = [mean_sq(start)], start
    for _ in range(15):
        centroids = lloyd_step(vectors, centroids)
        curve.append(mean_sq(centroids))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] < 0.9 * curve[0]  # and it does improve on its start
    torch.manual_seed(4)  # kmeans(iters=n) is n Lloyd steps from the same seeded start
    torch.testing.assert_close(kmeans(vectors, k=8, iters=15), centroids)


def test_lloyd_step_leaves_a_centroid_without_rows_in_place_and_checks_shapes():
    vectors = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    centroids = torch.tensor([[0.0, 1.0], [100.0, 100.0]])  # the second wins no row
    torch.testing.assert_close(lloyd_step(vectors, centroids), torch.tensor([[2 / 3, 4 / 3], [100.0, 100.0]]))
    with pytest.raises(ValueError, match="same D"):
        lloyd_step(vectors, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same D"):
        lloyd_step(vectors[:0], centroids)


def test_ema_kmeans_init_starts_from_centroids_once(monkeypatch):
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    z_e = (centres[:, None] + 0.1 * torch.randn(2, 64, 2)).reshape(1, 128, 2).permute(0, 2, 1)[..., None]  # (1, 2, 128, 1)
    q = EMAVectorQuantizer(codebook_size=2, code_dim=2, kmeans_iters=10, restart_threshold=0).train()
    q(z_e)
    means = z_e[0, :, :, 0].T.reshape(2, 64, 2).mean(1)
    torch.testing.assert_close(q.codebook[nearest_code(means, q.codebook)], means)  # the cluster means
    plain = EMAVectorQuantizer(codebook_size=2, code_dim=2, restart_threshold=0).train()
    plain(z_e)  # data init alone: two sampled vectors, not means
    assert not torch.allclose(plain.codebook.sort(0).values, means.sort(0).values, atol=1e-3)
    import vqlib.quantizers.vector

    def no_more(*args):
        raise AssertionError("k-means ran after the first training step")

    monkeypatch.setattr(vqlib.quantizers.vector, "kmeans", no_more)
    q(z_e + 1.0)  # later steps are EMA steps
    resumed = EMAVectorQuantizer(codebook_size=2, code_dim=2, kmeans_iters=10).train()
    resumed.load_state_dict(q.state_dict())
    resumed(z_e)  # a resumed, initialised quantizer never re-runs k-means
    with pytest.raises(ValueError, match="needs data_init=True"):
        EMAVectorQuantizer(4, 2, data_init=False, kmeans_iters=3)


def test_quantizer_step_flops_counts_the_distance_product_and_leaves_the_quantizer_alone():
    from vqlib.quantizers.factory import make_quantizer, quantizer_step_flops

    torch.manual_seed(0)
    z = torch.randn(4, 8, 3, 3)
    vq = make_quantizer("ema", 8, codebook_size=32)
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    flops = quantizer_step_flops(vq, z)
    assert flops == 2 * (4 * 3 * 3) * 32 * 8  # the addmm of ||e||² - 2 z·e, nothing else
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())
    assert quantizer_step_flops(vq, z) == flops  # deterministic
    fsq = make_quantizer("fsq", 8, levels=(8, 6, 5))
    assert 0 < quantizer_step_flops(fsq, z) < flops  # two small projections, no distances
