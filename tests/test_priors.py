"""What every prior shares: sampling from logits, bits/dim, the training loss, input checks, and the
contract both priors (PixelCNN, GPT) keep: a normalised distribution, save/load, overfitting."""

import io
import itertools
import math

import pytest
import torch

from vqlib.priors.base import (bits_per_dim, check_cond, check_tokens, label_mixture_bits, prior_loss,
                               sample_from_logits, sequence_bits)
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.priors.pixelcnn import PixelCNN, PixelCNNConfig
from vqlib.recipes.ch03_priors import bernoulli_bits, prior_train_config, train_prior, two_part_bits


def test_top_k_one_is_argmax_and_uses_no_randomness():
    torch.manual_seed(0)
    logits = torch.randn(64, 10)
    state = torch.get_rng_state()
    assert torch.equal(sample_from_logits(logits, top_k=1), logits.argmax(-1))
    assert torch.equal(torch.get_rng_state(), state)


def test_top_k_restricts_the_support_to_the_k_largest():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, -1.0, 2.9]]).expand(4000, 6)
    drawn = set(sample_from_logits(logits, top_k=3).tolist())
    assert drawn == {1, 3, 5}


def test_temperature_scales_the_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(50_000, 3)
    for temperature in (0.5, 2.0):
        freq = torch.bincount(sample_from_logits(logits, temperature), minlength=3).double() / 50_000
        expected = torch.softmax(logits[0].double() / temperature, -1)
        torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


@pytest.mark.parametrize("kwargs, match", [({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
                                           ({"top_k": 0}, "top_k")])
def test_bad_sampling_knobs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_from_logits(torch.zeros(2, 5), **kwargs)


class Uniform(torch.nn.Module):
    """A prior that gives every token probability 1/K (its only parameter is unused)."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size, self.w = vocab_size, torch.nn.Parameter(torch.zeros(()))

    def nll(self, tokens, cond=None):
        return torch.full((len(tokens),), math.log(self.vocab_size)) + 0 * self.w


def test_bits_per_dim_of_a_uniform_prior_is_log2_k_and_the_loss_matches():
    tokens = torch.randint(0, 37, (1234, 7, 7))
    assert bits_per_dim(Uniform(37), tokens, batch_size=100) == pytest.approx(math.log2(37))
    terms = prior_loss(Uniform(37), (tokens,))
    assert terms["loss"].item() == pytest.approx(math.log(37))
    assert terms["bits_per_dim"].item() == pytest.approx(math.log2(37))


def test_bits_per_dim_rejects_an_empty_set():
    with pytest.raises(ValueError, match="at least one"):
        bits_per_dim(Uniform(4), torch.zeros(0, 3, dtype=torch.long))


def test_token_and_label_checks_name_what_was_expected():
    with pytest.raises(TypeError, match="torch.long"):
        check_tokens(torch.zeros(2, 3), 4, "(B, L)", ndim=2)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        check_tokens(torch.tensor([[0, 4]]), 4, "(B, L)", ndim=2)
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        check_tokens(torch.zeros(2, 3, 3, dtype=torch.long), 4, "(B, L)", ndim=2)
    with pytest.raises(ValueError, match="unconditional"):
        check_cond(torch.zeros(2, dtype=torch.long), 0, 2)
    with pytest.raises(ValueError, match="class-conditional"):
        check_cond(None, 10, 2)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        check_cond(torch.zeros(3, dtype=torch.long), 10, 2)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        check_cond(torch.tensor([0, 10]), 10, 2)
    with pytest.raises(TypeError, match="long"):
        check_cond(torch.zeros(2), 10, 2)


def test_train_prior_learns_caches_and_retrains_for_new_codes():
    from vqlib.training.loop import TrainConfig

    config = GPTConfig(vocab_size=5, block_size=6, n_layer=1, n_head=2, n_embd=16)
    tokens = torch.arange(6).remainder(5).repeat(32, 1)  # one sequence, 32 times: easy to learn
    train = TrainConfig(steps=30, batch_size=8, lr=1e-2, log_every=5)
    gpt = GPT(config)
    history = train_prior(gpt, tokens, train, "test-prior", test=(tokens[:4], None), progress=False)
    assert history.last("bits_per_dim") < 0.5 * math.log2(5)
    again = GPT(config)
    assert train_prior(again, tokens, train, "test-prior", progress=False).seconds == history.seconds  # loaded
    torch.testing.assert_close(again(tokens[:2]), gpt(tokens[:2]))
    shifted, fresh = (tokens + 1) % 5, GPT(config)
    train_prior(fresh, shifted, train, "test-prior", progress=False)  # new codes: trained afresh, not loaded
    assert bits_per_dim(fresh, shifted[:4]) < 0.5 * math.log2(5) < bits_per_dim(fresh, tokens[:4])


# ----------------------------------------------------------------------------- both priors

PRIORS = ("pixelcnn", "gpt")


def tiny(kind: str, vocab_size: int = 6, num_classes: int = 0) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """A small prior of each kind and the shape of one of its token maps."""
    torch.manual_seed(0)
    if kind == "pixelcnn":
        return PixelCNN(PixelCNNConfig(vocab_size, n_layers=4, hidden=16, num_classes=num_classes)).eval(), (5, 5)
    return GPT(GPTConfig(vocab_size, block_size=12, n_layer=2, n_head=2, n_embd=32, num_classes=num_classes)).eval(), (12,)


@pytest.mark.parametrize("kind", PRIORS)
def test_probabilities_of_all_token_maps_sum_to_one(kind):
    prior, _ = tiny(kind, vocab_size=3, num_classes=2)
    shape = (2, 2) if kind == "pixelcnn" else (4,)
    maps = torch.tensor(list(itertools.product(range(3), repeat=4))).view(81, *shape)  # all 3^4 maps
    for label in (0, 1):
        log_p = -4 * prior.nll(maps, torch.full((81,), label)).double()
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-5)  # 3.0 if the first token were left out


@pytest.mark.parametrize("kind", PRIORS)
def test_save_and_load_round_trip(kind):
    prior, shape = tiny(kind, num_classes=3)
    buffer = io.BytesIO()
    torch.save(prior.state_dict(), buffer)
    buffer.seek(0)
    fresh = type(prior)(prior.config).eval()
    fresh.load_state_dict(torch.load(buffer))
    tokens, cond = torch.randint(0, 6, (2, *shape)), torch.tensor([2, 0])
    torch.testing.assert_close(fresh(tokens, cond), prior(tokens, cond), atol=0, rtol=0)


@pytest.mark.parametrize("kind", PRIORS)
def test_a_uniform_prior_scores_log2_k_bits_per_dim(kind):
    prior, shape = tiny(kind)
    last = prior.head[-1] if isinstance(prior.head, torch.nn.Sequential) else prior.head
    with torch.no_grad():
        for p in last.parameters():  # zero output layer: every logit 0, every code 1/K
            p.zero_()
    assert bits_per_dim(prior, torch.randint(0, 6, (10, *shape))) == pytest.approx(math.log2(6), abs=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_bits_per_dim_scores_in_eval_mode_and_restores_the_mode(training):
    torch.manual_seed(0)
    prior = GPT(GPTConfig(6, block_size=12, n_layer=2, n_head=2, n_embd=32, dropout=0.5)).train(training)
    tokens = torch.randint(0, 6, (10, 12))
    score = bits_per_dim(prior, tokens, batch_size=4)
    assert prior.training == training
    assert bits_per_dim(prior, tokens, batch_size=4) == score  # no dropout while scoring: the same number twice
    with torch.no_grad():
        assert score == pytest.approx(prior.eval().nll(tokens).mean().item() / math.log(2), rel=1e-6)


@pytest.mark.parametrize("kind", PRIORS)
def test_overfits_one_batch(kind):
    prior, shape = tiny(kind)
    prior.train()
    tokens = torch.randint(0, 6, (8, *shape))
    opt = torch.optim.Adam(prior.parameters(), lr=5e-3)
    before = prior.nll(tokens).mean().item()
    for _ in range(150):
        loss = prior_loss(prior, (tokens,))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    # only the first token of each map is uncertain once the batch is memorised: about log(K) / L is reachable
    assert prior.nll(tokens).mean().item() < before / 5


# ----------------------------------------------------------------------------- per-item code lengths

def test_sequence_bits_sums_the_per_token_nll_and_averages_to_bits_per_dim():
    prior, shape = tiny("gpt", num_classes=3)
    tokens, cond = torch.randint(0, 6, (7, *shape)), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    bits = sequence_bits(prior, tokens, cond, batch_size=3)
    assert bits.shape == (7,) and bits.dtype == torch.float64
    expected = prior.nll(tokens, cond).double() * shape[0] / math.log(2)
    torch.testing.assert_close(bits, expected.detach())
    assert bits.mean().item() / shape[0] == pytest.approx(bits_per_dim(prior, tokens, cond), rel=1e-6)
    assert sequence_bits(Uniform(37), torch.zeros(3, 7, 7, dtype=torch.long)).tolist() == \
        pytest.approx([49 * math.log2(37)] * 3)


def test_label_mixture_is_a_normalised_prior_and_costs_at_most_the_label_plus_the_tokens():
    prior, _ = tiny("pixelcnn", vocab_size=3, num_classes=2)
    maps = torch.tensor(list(itertools.product(range(3), repeat=4))).view(81, 2, 2)  # all 3^4 maps
    mixture = label_mixture_bits(prior, maps, num_classes=2, batch_size=20)
    assert torch.exp2(-mixture).sum().item() == pytest.approx(1.0, abs=1e-6)
    for label in (0, 1):
        given = sequence_bits(prior, maps, torch.full((81,), label))
        assert (mixture <= given + 1 + 1e-9).all()  # log2 2 = 1 bit for the label
    by_hand = -torch.log2((torch.exp2(-sequence_bits(prior, maps, torch.zeros(81, dtype=torch.long)))
                           + torch.exp2(-sequence_bits(prior, maps, torch.ones(81, dtype=torch.long)))) / 2)
    torch.testing.assert_close(mixture, by_hand)


def test_bernoulli_bits_match_the_formula_and_clamping_bounds_every_pixel():
    x = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # (1, 2, 2)
    mean = torch.tensor([[[0.5, 0.25], [1.0, 0.0]]])  # the last pixel is certain, and wrong
    eps = 1e-3
    expected = -(math.log2(0.5) + math.log2(0.75) + math.log2(1 - eps) + math.log2(eps))
    assert bernoulli_bits(x, mean, eps).item() == pytest.approx(expected)
    torch.manual_seed(0)
    mean = torch.rand(5, 1, 3, 3)  # all 2^9 binary images of 3x3 pixels: probabilities sum to one
    images = torch.tensor(list(itertools.product((0.0, 1.0), repeat=9))).view(512, 1, 3, 3)
    for row in range(5):
        bits = bernoulli_bits(images, mean[row].expand(512, 1, 3, 3), eps=0.1)
        assert torch.exp2(-bits).sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="binary"):
        bernoulli_bits(torch.full((1, 2, 2), 0.5), torch.rand(1, 2, 2))
    with pytest.raises(ValueError, match="eps"):
        bernoulli_bits(x, x, eps=0.0)


def test_two_part_code_adds_the_prior_bits_and_bounds_minus_log_p_x():
    """For a toy model with 3 codes the exact -log2 p(x) = -log2 sum_z p(z) p(x|z) is computable:
    the two-part code of the best z is never shorter."""
    torch.manual_seed(0)
    p_z = torch.tensor([0.5, 0.3, 0.2])
    means = torch.rand(3, 1, 2, 2)  # the decoder's output for each code
    x = torch.bernoulli(torch.full((6, 1, 2, 2), 0.5))
    per_code = torch.stack([two_part_bits(x, means[z].expand_as(x), torch.full((6,), -math.log2(p_z[z])), 1e-3)
                            for z in range(3)])  # (3, N)
    exact = -torch.logsumexp(-per_code * math.log(2), 0) / math.log(2)  # -log2 sum_z p(z) p(x|z)
    assert (per_code.min(0).values >= exact - 1e-9).all()
    torch.testing.assert_close(per_code[1] - bernoulli_bits(x, means[1].expand_as(x), 1e-3),
                               torch.full((6,), -math.log2(0.3), dtype=torch.float64))
    with pytest.raises(ValueError, match="one length per image"):
        two_part_bits(x, means[0].expand_as(x), torch.zeros(5))


def test_prior_budget_is_a_fixed_step_count_per_profile():
    for profile in ("smoke", "quick", "full"):
        config = prior_train_config(profile)
        assert config.steps > 0 and config.max_seconds is None
