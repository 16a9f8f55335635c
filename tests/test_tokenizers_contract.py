"""The contract every tokenizer keeps (vqlib.tokenizers.base, built with vqlib.quantizers.factory): one output
type, one shell, encode/decode round trips, state that eval() and encode() never change, gradients that reach
the encoder, checkpoints that load with weights_only=True, and clear errors for bad input. Each model's own
test file checks only what is particular to it."""

import pytest
import torch

from vqlib.quantizers.factory import KINDS, make_quantizer
from vqlib.quantizers.vector import EMAVectorQuantizer, VectorQuantizer
from vqlib.tokenizers.base import Tokenizer, TokenizerOutput, check_index_rank
from vqlib.tokenizers.video import FrameVQVAE, VideoVQVAE, VideoVQVAEConfig
from vqlib.tokenizers.vqgan import VQGAN, VQGANConfig
from vqlib.tokenizers.vqvae import VQVAE, Encoder, VQVAEConfig
from vqlib.tokenizers.vqvae2 import VQVAE2, VQVAE2Config

VIDEO = dict(frames=4, size=8, channels=1, hidden=8, res_hidden=4, res_blocks=1, codebook_size=16, code_dim=4,
             space_downsample=2, heads=2)


def tokenizers() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    """name -> (an untrained tiny model, an input batch)."""
    torch.manual_seed(0)
    images, videos = torch.rand(2, 1, 8, 8), torch.rand(2, 4, 1, 8, 8)
    return {
        "vqvae": (VQVAE(VQVAEConfig(in_channels=1, hidden=8, res_hidden=4, res_blocks=1, downsample=2,
                                    codebook_size=16, code_dim=4)), images),
        "vqvae-vq": (VQVAE(VQVAEConfig(in_channels=1, hidden=8, res_hidden=4, res_blocks=1, downsample=2,
                                       codebook_size=16, code_dim=4, quantizer="vq")), images),
        "vqgan": (VQGAN(VQGANConfig(in_channels=1, hidden=8, channel_mult=(1, 2), res_blocks=1, norm_groups=4,
                                    codebook_size=16, code_dim=4)), images),
        "video-3d": (VideoVQVAE(VideoVQVAEConfig(**VIDEO)), videos),
        "video-attention": (VideoVQVAE(VideoVQVAEConfig(**VIDEO, temporal="attention")), videos),
        "video-frame": (FrameVQVAE(VideoVQVAEConfig(**VIDEO, time_downsample=1)), videos),
        "vqvae2": (VQVAE2(VQVAE2Config(in_channels=1, hidden=8, res_hidden=4, res_blocks=1, codebook_size=16,
                                       code_dim=4)), images),
    }


def levels(t):
    """A hierarchical tokenizer's tuple of levels, or a one-level tokenizer's tensor as a tuple of one."""
    return t if isinstance(t, tuple) else (t,)


@pytest.mark.parametrize("name", list(tokenizers()))
def test_every_tokenizer_returns_the_one_output_type(name):
    model, x = tokenizers()[name]
    out = model(x)
    assert type(out) is TokenizerOutput and out._fields == ("x_hat", "loss", "indices", "z_e", "z_q")
    assert out.x_hat.shape == x.shape and out.loss.shape == ()
    codes = model.encode(x)
    assert len(levels(out.indices)) == len(levels(codes)) == (2 if name == "vqvae2" else 1)  # top first
    for indices, z_e, z_q, code in zip(levels(out.indices), levels(out.z_e), levels(out.z_q), levels(codes)):
        assert indices.dtype == torch.long and indices.shape == code.shape
        assert z_e.shape == z_q.shape and z_e.shape[0] == len(x) and z_e.shape[2:] == indices.shape[1:]


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_once(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny tokenizer after one training-mode forward pass (EMA codebooks initialised from data)."""
    model, x = tokenizers()[name]
    model(x)
    return model, x


@pytest.mark.parametrize("name", list(tokenizers()))
def test_encode_then_decode_is_the_forward_pass_in_eval_mode(name):
    model, x = trained_once(name)
    model.eval()
    torch.testing.assert_close(model.decode(model.encode(x)), model(x).x_hat)


@pytest.mark.parametrize("name", list(tokenizers()))
def test_encode_never_updates_the_codebook_even_in_training_mode(name):
    model, x = trained_once(name)
    before = state(model.train())
    model.encode(x)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("name", list(tokenizers()))
def test_eval_changes_no_buffer(name):
    model, x = trained_once(name)
    before = state(model.eval())
    model(x)
    model(torch.rand_like(x))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("name", list(tokenizers()))
def test_the_reconstruction_gradient_reaches_the_first_encoder_layer(name):
    model, x = tokenizers()[name]
    torch.nn.functional.mse_loss(model(x).x_hat, x).backward()  # decoder, quantizer, encoder
    first = next(p for n, p in model.named_parameters() if "encoder" in n and p.dim() > 1)
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(tokenizers()))
def test_a_saved_tokenizer_loads_with_weights_only_and_gives_the_same_output(name, tmp_path):
    model, x = trained_once(name)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    copy, _ = tokenizers()[name]
    torch.manual_seed(1)  # other initial weights: the loaded ones must replace all of them
    copy.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    model.eval(), copy.eval()
    assert torch.equal(model(x).x_hat, copy(x).x_hat)
    for a, b in zip(levels(model.encode(x)), levels(copy.encode(x))):
        assert torch.equal(a, b)


def bad_inputs(x: torch.Tensor) -> dict[str, tuple[torch.Tensor, type, str]]:
    """name -> (input, error type, words the message must contain)."""
    channel = 1 if x.dim() == 4 else 2
    return {"no batch axis": (x[0], ValueError, str(tuple(x[0].shape))),
            "other channels": (torch.cat([x, x], dim=channel), ValueError, "must have shape"),
            "empty batch": (x[:0], ValueError, "empty"),
            "integers": ((x * 255).long(), TypeError, "float"),
            "float64": (x.double(), TypeError, "float64")}


@pytest.mark.parametrize("bad", ["no batch axis", "other channels", "empty batch", "integers", "float64"])
@pytest.mark.parametrize("name", list(tokenizers()))
def test_bad_input_gets_an_error_that_says_what_was_expected(name, bad):
    model, x = tokenizers()[name]
    value, error, words = bad_inputs(x)[bad]
    for call in (model, model.encode):
        with pytest.raises(error) as info:
            call(value)
        assert words.lower() in str(info.value).lower(), str(info.value)


@pytest.mark.parametrize("model_class", [VQVAE, VQGAN, VideoVQVAE])
def test_forward_encode_and_decode_are_written_once(model_class):
    assert issubclass(model_class, Tokenizer)
    for method in ("forward", "encode", "decode"):
        assert getattr(model_class, method) is getattr(Tokenizer, method)


@pytest.mark.parametrize("name", ["vqvae", "vqgan", "video-3d", "video-attention", "video-frame"])
def test_decode_refuses_a_code_map_of_the_wrong_rank(name):
    model, x = trained_once(name)
    with pytest.raises(ValueError, match="code (map|grid)"):
        model.decode(model.encode(x)[:, None])  # one axis too many


def test_a_tokenizer_must_say_what_it_accepts():
    class NoChecks(Tokenizer):
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoChecks()


def test_check_index_rank_names_what_was_expected_and_what_arrived():
    check_index_rank(torch.zeros(2, 3, 4, dtype=torch.long), 3, "(B, h, w) code map")
    with pytest.raises(ValueError, match=r"indices must be a \(B, h, w\) code map, got \(2, 3\)"):
        check_index_rank(torch.zeros(2, 3, dtype=torch.long), 3, "(B, h, w) code map")
    with pytest.raises(ValueError, match="top must be a .* got list"):
        check_index_rank([1, 2], 3, "(B, h, w) code map", name="top")


# ----------------------------------------------------------------------------- the factory

@pytest.mark.parametrize("quantizer, expected", [("vq", VectorQuantizer), ("ema", EMAVectorQuantizer)])
def test_the_tokenizers_build_their_quantizer_with_the_factory(quantizer, expected):
    config = VQVAEConfig(in_channels=1, hidden=8, res_hidden=4, res_blocks=1, codebook_size=16, code_dim=4,
                         beta=0.5, quantizer=quantizer, decay=0.9, restart_threshold=0.0)
    torch.manual_seed(1)
    model = VQVAE(config)
    assert type(model.quantizer) is expected and model.quantizer.beta == 0.5
    if quantizer == "ema":
        assert model.quantizer.decay == 0.9 and model.quantizer.restart_threshold == 0.0
    # the same draws: the encoder, then the quantizer, then the decoder
    torch.manual_seed(1)
    Encoder(config)
    options = dict(decay=0.9, restart_threshold=0.0) if quantizer == "ema" else {}
    again = make_quantizer(quantizer, 4, codebook_size=16, beta=0.5, **options)
    assert torch.equal(again.codebook, model.quantizer.codebook)
    gan = VQGAN(VQGANConfig(in_channels=1, hidden=8, channel_mult=(1, 2), res_blocks=1, norm_groups=4,
                            codebook_size=16, code_dim=4, quantizer=quantizer, decay=0.9))
    assert type(gan.quantizer) is expected
    assert type(VideoVQVAE(VideoVQVAEConfig(**VIDEO, decay=0.9)).quantizer) is EMAVectorQuantizer


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_quantizes_and_decodes_its_indices(kind):
    options = {"vq": dict(codebook_size=8), "ema": dict(codebook_size=8), "l2": dict(codebook_size=8, low_dim=3),
               "rotation": dict(inner="ema", codebook_size=8), "residual": dict(num_stages=2, codebook_size=4),
               "fsq": dict(levels=(3, 3)), "lfq": dict(bits=3)}[kind]
    q = make_quantizer(kind, 4, **options).eval()
    z_e = torch.randn(2, 4, 3, 3)
    out = q(z_e)
    torch.testing.assert_close(q.decode_indices(out.indices), out.z_q)
