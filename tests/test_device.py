"""One device for a model and its data (vqlib.core.device), and the library on every device there is.

The tests that take the ``device`` fixture run on the CPU and, on a machine with a GPU, on CUDA
(``make gpu-check``); here the CUDA half is skipped.
"""

from collections import OrderedDict
from typing import NamedTuple

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from vqlib.core.device import model_device, to_device
from vqlib.core.inference import in_batches
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.quantizers.factorized import FactorizedQuantizer
from vqlib.quantizers.fsq import FiniteScalarQuantizer
from vqlib.quantizers.lfq import LookupFreeQuantizer
from vqlib.quantizers.residual import ResidualVectorQuantizer
from vqlib.quantizers.vector import EMAVectorQuantizer, VectorQuantizer, nearest_code
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig, vqvae_loss
from vqlib.training.loop import TrainConfig, fit


class Pair(NamedTuple):
    x: torch.Tensor
    label: str


# ----------------------------------------------------------------------------- the helper

def test_to_device_moves_every_tensor_of_a_nested_batch(device):
    batch = {"images": torch.rand(2, 3), "pair": Pair(torch.ones(2), "a"),
             "list": [torch.zeros(1), 3, None], "ordered": OrderedDict(k=torch.arange(3))}
    moved = to_device(batch, device)
    assert moved["images"].device.type == device.type and torch.equal(moved["images"].cpu(), batch["images"])
    assert isinstance(moved["pair"], Pair) and moved["pair"].label == "a" and moved["pair"].x.device.type == device.type
    assert moved["list"][0].device.type == device.type and moved["list"][1:] == [3, None]
    assert isinstance(moved["ordered"], OrderedDict) and moved["ordered"]["k"].device.type == device.type
    assert batch["images"].device.type == "cpu"  # the caller's batch is left where it was


def test_to_device_moves_datasets_and_modules(device):
    data = to_device(TensorDataset(torch.rand(4, 2), torch.arange(4)), device)
    assert isinstance(data, TensorDataset) and all(t.device.type == device.type for t in data.tensors)
    layer = nn.Linear(2, 3)
    assert to_device(layer, device) is layer and model_device(layer).type == device.type


def test_model_device_names_the_problem():
    assert model_device(nn.BatchNorm1d(3)) == torch.device("cpu")  # parameters and buffers
    with pytest.raises(ValueError, match="no parameters or buffers"):
        model_device(nn.ReLU())
    split = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    split[1].weight = nn.Parameter(split[1].weight.detach().to(torch.device("meta")))
    with pytest.raises(ValueError, match="spread over several devices"):
        model_device(split)


def test_in_batches_runs_on_the_model_device_and_returns_cpu_results(device):
    model = nn.Linear(3, 2).to(device)
    x = torch.rand(7, 3)
    seen = []

    def fn(batch):
        seen.append(batch.device.type)
        return model(batch)

    out = in_batches(fn, model, x, batch_size=3)
    assert seen == [device.type] * 3 and out.device.type == "cpu"
    torch.testing.assert_close(out, model.cpu()(x))


# ----------------------------------------------------------------------------- the library on each device

def test_nearest_code_is_the_brute_force_nearest_on_the_device(device):
    vectors, codebook = torch.randn(500, 8), torch.randn(300, 8)
    got = nearest_code(vectors.to(device), codebook.to(device))
    assert got.device.type == device.type
    assert torch.equal(got.cpu(), torch.cdist(vectors.double(), codebook.double()).argmin(dim=1))


QUANTIZERS = {
    "vq": lambda: VectorQuantizer(256, 16),
    "ema": lambda: EMAVectorQuantizer(256, 16),
    "factorized": lambda: FactorizedQuantizer(256, 16),
    "fsq": lambda: FiniteScalarQuantizer((8, 6, 5), 16),
    "lfq": lambda: LookupFreeQuantizer(8, 16),
    "residual": lambda: ResidualVectorQuantizer(2, 16, 16),
}


@pytest.mark.parametrize("name", QUANTIZERS)
def test_quantizer_gives_the_cpu_codes_on_the_device(name, device):
    torch.manual_seed(0)
    quantizer = QUANTIZERS[name]().eval()
    z_e = torch.randn(4, 16, 6, 6)
    expected = quantizer(z_e).indices
    out = quantizer.to(device)(z_e.to(device))
    assert out.indices.device.type == device.type and out.z_q.device.type == device.type
    assert torch.equal(out.indices.cpu(), expected)


def test_vqvae_trains_on_the_device(device):
    """fit on the device, with bfloat16 autocast where the loop uses it (CUDA): finite losses, the model
    and its EMA codebook on the device, and a gradient that reaches the encoder through the quantizer."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(in_channels=1, hidden=16, res_hidden=8, res_blocks=1, codebook_size=32, code_dim=8))
    data = TensorDataset(torch.rand(16, 1, 16, 16))
    history = fit(model, vqvae_loss, data, TrainConfig(steps=4, batch_size=8, log_every=1), device=device,
                  progress=False)
    assert history.steps == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history.train)
    assert model_device(model).type == device.type
    x = data.tensors[0][:4].to(device)
    model.train()
    vqvae_loss(model, (x,))["loss"].backward()
    first = model.encoder.net[0].weight.grad
    assert first is not None and torch.isfinite(first).all() and first.abs().sum() > 0
    assert model.decode(model.encode(x)).shape == x.shape


def test_gpt_samples_on_the_device(device):
    """Greedy sampling with the key-value cache on the device gives the tokens that the full forward
    pass predicts at every position, on the device, for each class."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=16, block_size=12, n_layer=2, n_head=2, n_embd=32, num_classes=3)).to(device)
    gpt.eval()
    cond = torch.tensor([0, 1, 2], device=device)
    tokens = gpt.sample(3, 12, cond=cond, top_k=1)
    assert tokens.device.type == device.type and tokens.shape == (3, 12) and tokens.dtype == torch.long
    assert torch.equal(gpt.sample(3, 12, cond=cond, top_k=1, use_cache=False), tokens)
    with torch.no_grad():
        predicted = gpt(tokens[:, :-1], cond).argmax(-1)  # (3, 11): position t predicts token t + 1
    assert torch.equal(predicted, tokens[:, 1:])
    drawn = gpt.sample(3, 12, cond=cond)  # with temperature 1: any tokens in range
    assert drawn.device.type == device.type and 0 <= int(drawn.min()) and int(drawn.max()) < 16


def test_the_device_sentinel_catches_data_that_never_reached_the_models_device(monkeypatch):
    """Under VQLIB_DEVICE_SENTINEL=1 to_device stands float64 in for the device: fit moves the model there,
    data moved with to_device meets it, data left behind raises where CUDA would raise a device mismatch."""
    monkeypatch.setenv("VQLIB_DEVICE_SENTINEL", "1")
    model = VQVAE(VQVAEConfig(in_channels=1, hidden=16, res_hidden=8, res_blocks=1, codebook_size=32, code_dim=8))
    x = torch.rand(8, 1, 16, 16)
    fit(model, vqvae_loss, TensorDataset(x), TrainConfig(steps=1, batch_size=8), progress=False)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert to_device(torch.arange(3), "cpu").dtype == torch.int64  # integers keep their dtype
    with torch.no_grad():
        assert model(to_device(x, model_device(model))).x_hat.dtype == torch.float64
        with pytest.raises(TypeError, match="VQLIB_DEVICE_SENTINEL: x never went through"):
            model(x)
    monkeypatch.setenv("VQLIB_DEVICE_SENTINEL", "0")
    assert to_device(x, "cpu") is x  # off: a move to where x already is returns x itself
