"""Chapter 6's quantizers all keep the contract of vqlib.quantizers.vector: QuantizerOutput, image and video
latents, decode_indices, gradients, eval() and checkpoints, and clear errors for bad input."""

import pytest
import torch
from torch import nn

from vqlib.quantizers.factorized import FactorizedQuantizer
from vqlib.quantizers.fsq import FiniteScalarQuantizer
from vqlib.quantizers.lfq import LookupFreeQuantizer
from vqlib.quantizers.residual import ResidualVectorQuantizer
from vqlib.quantizers.rotation import RotationTrickQuantizer
from vqlib.quantizers.vector import EMAVectorQuantizer, QuantizerOutput, VectorQuantizer

D = 4
MAKERS = {
    "l2": lambda: FactorizedQuantizer(codebook_size=8, code_dim=D, low_dim=3),
    "rotation-vq": lambda: RotationTrickQuantizer(VectorQuantizer(8, D)),
    "rotation-ema": lambda: RotationTrickQuantizer(EMAVectorQuantizer(8, D)),
    "residual": lambda: ResidualVectorQuantizer(num_stages=3, codebook_size=5, code_dim=D),
    "fsq": lambda: FiniteScalarQuantizer(levels=(3, 4, 2), code_dim=D),
    "lfq": lambda: LookupFreeQuantizer(bits=3, code_dim=D),
}
SHAPES = [(3, D, 5, 6), (2, D, 3, 5, 4)]  # image (B, D, H, W) and video (B, D, T, H, W)


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MAKERS[name]()


def stage_axis(q: nn.Module) -> tuple[int, ...]:
    return (q.num_stages,) if isinstance(q, ResidualVectorQuantizer) else ()


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_contract_and_shapes(name, shape):
    q = make(name)
    out = q(torch.randn(shape))
    assert isinstance(out, QuantizerOutput)
    assert out.z_q.shape == shape and out.z_q.dtype == torch.float32
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.indices.dtype == torch.long
    assert out.indices.shape == shape[:1] + stage_axis(q) + shape[2:]
    assert out.indices.min() >= 0 and out.indices.max() < q.codebook_size


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_decode_indices_gives_back_z_q(name, shape):
    q = make(name)
    q(torch.randn(shape))  # one training step first (data init of EMA codebooks)
    q.eval()
    out = q(torch.randn(shape))
    torch.testing.assert_close(q.decode_indices(out.indices), out.z_q)


@pytest.mark.parametrize("name", MAKERS)
def test_gradients_reach_the_encoder(name):
    encoder = nn.Conv2d(1, D, kernel_size=3, padding=1)
    q = make(name)
    out = q(encoder(torch.randn(2, 1, 6, 6)))
    out.z_q.pow(2).mean().backward(retain_graph=True)  # through z_q alone: the decoder's path
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    if name != "fsq":  # FSQ has no loss
        encoder.zero_grad()
        out.loss.backward()
        assert encoder.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", MAKERS)
def test_eval_changes_no_buffer(name):
    q = make(name)
    q(torch.randn(2, D, 4, 4))
    before = state(q)
    q.eval()
    for _ in range(3):
        q(torch.randn(2, D, 4, 4) * 10)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


@pytest.mark.parametrize("name", MAKERS)
def test_save_load_round_trip(name):
    q = make(name)
    q(torch.randn(2, D, 4, 4))
    copy = MAKERS[name]()
    copy.load_state_dict(q.state_dict())
    z_e = torch.randn(2, D, 4, 4)
    a, b = q.eval()(z_e), copy.eval()(z_e)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.z_q, b.z_q)


@pytest.mark.parametrize("name", ["l2", "rotation-vq", "residual", "lfq"])
def test_overfit_one_batch(name):
    # A free "encoder output" and the quantizer learn to meet: 150 steps cut the loss 5-fold.
    torch.manual_seed(0)
    z_e = nn.Parameter(torch.randn(4, D, 4, 4))
    # LFQ's entropy terms may be negative, so its test optimises the commitment term alone
    q = LookupFreeQuantizer(bits=3, code_dim=D, entropy_weight=0.0) if name == "lfq" else make(name)
    opt = torch.optim.Adam([z_e, *q.parameters()], lr=0.05)
    first = q(z_e).loss.item()
    for _ in range(150):
        loss = q(z_e).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 5


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("z_e, error, words", [
    (torch.randn(2, D + 1, 4, 4), ValueError, f"code_dim={D}"),
    (torch.randn(2, D, 4), ValueError, "(B, D, H, W)"),
    (torch.randn(0, D, 4, 4), ValueError, "empty"),
    (torch.randint(0, 5, (2, D, 4, 4)), TypeError, "floating-point"),
    ([[1.0]], TypeError, "torch.Tensor"),
])
def test_bad_latents(name, z_e, error, words):
    with pytest.raises(error) as info:
        make(name)(z_e)
    assert words in str(info.value)


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latents_raise(name, bad):
    q = make(name)
    z_e = torch.randn(2, D, 4, 4)
    z_e[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        q(z_e)


@pytest.mark.parametrize("name", ["l2", "rotation-vq", "fsq", "lfq"])
@pytest.mark.parametrize("indices, error, words", [
    (torch.tensor([[[10_000]]]), ValueError, "must lie in [0,"),
    (torch.tensor([[[-1]]]), ValueError, "must lie in [0,"),
    (torch.tensor([[[1]]], dtype=torch.int32), TypeError, "torch.long"),
    (torch.zeros(0, 2, 2, dtype=torch.long), ValueError, "non-empty"),
])
def test_bad_indices(name, indices, error, words):
    with pytest.raises(error) as info:
        make(name).decode_indices(indices)
    assert words in str(info.value)


@pytest.mark.parametrize("name", MAKERS)
def test_bfloat16_autocast_runs_and_keeps_the_indices(name):
    q = make(name)
    z_e = torch.randn(2, D, 4, 4)
    q(z_e)
    q.eval()
    reference = q(z_e)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z_e.requires_grad_())
    out.z_q.float().sum().backward()
    assert torch.isfinite(out.loss) and torch.isfinite(z_e.grad).all()
    if name in ("rotation-vq", "rotation-ema", "residual"):  # no projection: the search sees float32 z_e
        assert torch.equal(out.indices, reference.indices)
