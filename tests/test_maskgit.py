"""MaskGIT: the masking schedule, the masked-token loss, bidirectionality, iterative decoding,
counting network evaluations, conditioning, save/load, overfitting and bad input."""

import io
import math

import pytest
import torch

from vqlib.core.compute import count_forward_calls, step_flops
from vqlib.priors.base import guided_logits, prior_loss
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.priors.maskgit import (MaskGIT, MaskGITConfig, any_order_bits, gamma, mask_counts, masked_bits,
                                  masked_cross_entropy, maskgit_loss, random_mask)
from vqlib.recipes.ch07_maskgit import equal_compute_steps
from vqlib.training.loop import TrainConfig, fit

K, L = 7, 12
MASK = K


def model(**kwargs) -> MaskGIT:
    torch.manual_seed(0)
    config = dict(vocab_size=K, block_size=L, n_layer=2, n_head=2, n_embd=16) | kwargs
    net = MaskGIT(MaskGITConfig(**config)).eval()
    with torch.no_grad():  # larger weights than the init, so that every dependence is clearly visible
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return net


# ----------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("schedule", ["cosine", "linear", "square"])
def test_schedule_goes_from_all_masked_to_none_and_decreases(schedule):
    assert gamma(0.0, schedule).item() == 1.0 and gamma(1.0, schedule).item() == pytest.approx(0.0, abs=1e-12)
    values = gamma(torch.linspace(0, 1, 101), schedule)
    assert (values[1:] <= values[:-1]).all() and ((0 <= values) & (values <= 1)).all()


def test_schedule_values_match_their_formulas():
    r = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    torch.testing.assert_close(gamma(r, "cosine"), torch.cos(math.pi * r / 2))
    torch.testing.assert_close(gamma(r, "linear"), 1 - r)
    torch.testing.assert_close(gamma(r, "square"), 1 - r**2)
    assert gamma(0.5, "cosine").item() == pytest.approx(math.sqrt(0.5))


def test_mask_counts_follow_the_schedule_and_end_with_no_mask():
    assert mask_counts(49, 4, "cosine") == [math.floor(49 * math.cos(math.pi / 2 * t / 4)) for t in (1, 2, 3)] + [0]
    assert mask_counts(10, 5, "linear") == [8, 6, 4, 2, 0]
    assert mask_counts(5, 1) == [0]
    for n, steps in [(49, 49), (49, 12), (3, 3), (100, 7)]:
        counts = mask_counts(n, steps)
        assert len(counts) == steps and counts[-1] == 0
        assert all(b < a for a, b in zip([n] + counts, counts)), "every step must unmask at least one token"


def test_random_mask_masks_ceil_gamma_l_positions_and_only_those():
    tokens = torch.randint(0, K, (2000, L))
    masked, mask = random_mask(tokens, MASK, "cosine", torch.Generator().manual_seed(0))
    assert torch.equal(masked == MASK, mask) and torch.equal(masked[~mask], tokens[~mask])
    n = mask.sum(1)
    assert n.min() >= 1 and n.max() <= L
    expected = L * 2 / math.pi  # E[cos(pi r / 2)] = 2 / pi for r ~ U(0, 1), plus < 1 from the ceiling
    assert expected <= n.float().mean() <= expected + 1


# ----------------------------------------------------------------------------- the model

def test_shapes_and_dtypes():
    net = model(num_classes=3)
    tokens, cond = torch.randint(0, K + 1, (2, L)), torch.tensor([0, 2])
    logits = net(tokens, cond)
    assert logits.shape == (2, L, K) and logits.dtype == torch.float32
    samples = net.sample(3, torch.tensor([1, 1, 2]), steps=4)
    assert samples.shape == (3, L) and samples.dtype == torch.long
    assert samples.min() >= 0 and samples.max() < K


def test_every_logit_depends_on_every_token_but_the_causal_gpt_does_not():
    net = model()
    gpt = GPT(GPTConfig(vocab_size=K, block_size=L, n_layer=2, n_head=2, n_embd=16)).eval()
    tokens = torch.randint(0, K, (1, L))
    logits, gpt_logits = net(tokens), gpt(tokens)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % K  # change the last token
    assert ((net(changed)[:, :-1] - logits[:, :-1]).abs().amax(-1) > 1e-4).all(), "earlier logits must change"
    torch.testing.assert_close(gpt(changed)[:, :-1], gpt_logits[:, :-1], atol=1e-6, rtol=0)


def test_class_label_changes_the_logits():
    net = model(num_classes=3)
    tokens = torch.full((1, L), MASK).expand(2, L)
    logits = net(tokens, torch.tensor([0, 1]))
    assert ((logits[0] - logits[1]).abs().amax(-1) > 1e-4).all()


def test_loss_is_the_cross_entropy_on_masked_positions_only():
    net = model()
    tokens = torch.randint(0, K, (8, L))
    masked, mask = random_mask(tokens, MASK, "cosine", torch.Generator().manual_seed(3))
    loss = masked_cross_entropy(net, tokens, generator=torch.Generator().manual_seed(3))
    logits = net(masked)
    expected = torch.nn.functional.cross_entropy(logits[mask], tokens[mask])
    torch.testing.assert_close(loss, expected)
    everywhere = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    assert (loss - everywhere).abs() > 1e-3  # a loss over all positions would differ


def test_label_smoothing_is_applied_by_the_training_loss_only_when_configured():
    tokens = torch.randint(0, K, (8, L))
    assert MaskGITConfig(vocab_size=K, block_size=L).label_smoothing == 0.0  # off unless configured
    plain, smooth = model(label_smoothing=0.0), model(label_smoothing=0.1)  # the same weights (same seed)
    torch.manual_seed(5)
    loss_plain = maskgit_loss(plain, (tokens,))["loss"]
    torch.manual_seed(5)
    terms = maskgit_loss(smooth, (tokens,))
    loss_smooth = terms["loss"]
    torch.testing.assert_close(terms["masked_bits"], loss_plain.detach() / math.log(2))  # logged bits: unsmoothed
    masked, mask = random_mask(tokens, MASK, "cosine", torch.Generator().manual_seed(3))
    logits = plain(masked)[mask]  # (M, K)
    log_p = torch.log_softmax(logits, -1)
    by_hand = -(0.9 * log_p.gather(1, tokens[mask][:, None])[:, 0] + 0.1 * log_p.mean(1)).mean()  # smoothed targets
    torch.testing.assert_close(masked_cross_entropy(plain, tokens, generator=torch.Generator().manual_seed(3),
                                                    label_smoothing=0.1), by_hand)
    torch.manual_seed(5)
    torch.testing.assert_close(loss_plain, masked_cross_entropy(plain, tokens))  # default: no smoothing
    assert (loss_smooth - loss_plain).abs() > 1e-3  # the config's smoothing reaches the loss
    torch.manual_seed(5)
    torch.testing.assert_close(loss_smooth, masked_cross_entropy(smooth, tokens, label_smoothing=0.1))


def test_step_flops_counts_a_training_step_without_touching_the_model():
    net = model(num_classes=3).train()
    gpt = GPT(GPTConfig(vocab_size=K, block_size=L, n_layer=2, n_head=2, n_embd=16, num_classes=3))
    batch = (torch.randint(0, K, (4, L)), torch.tensor([0, 1, 2, 0]))
    before = [p.clone() for p in net.parameters()]
    flops = step_flops(net, maskgit_loss, batch)
    assert flops == step_flops(net, maskgit_loss, batch) > 0  # deterministic: matmuls do not depend on the mask
    assert all(p.grad is None for p in net.parameters()) and all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    # the same blocks on L + 1 positions (class token + L codes) against the GPT's L (class token + L - 1 codes)
    assert 1 < flops / step_flops(gpt, prior_loss, batch) < (L + 1) / L + 0.05


def test_equal_compute_steps_match_the_gpts_operations():
    torch.manual_seed(0)
    net = MaskGIT(MaskGITConfig(vocab_size=K, block_size=L, n_layer=2, n_head=2, n_embd=16, num_classes=3))
    gpt = GPT(GPTConfig(vocab_size=K, block_size=L, n_layer=2, n_head=2, n_embd=16, num_classes=3))
    batch = (torch.randint(0, K, (4, L)), torch.randint(0, 3, (4,)))
    ratio = step_flops(gpt, prior_loss, batch) / step_flops(net, maskgit_loss, batch)
    assert ratio < 1  # a MaskGIT step runs one more position: fewer steps for the same operations
    for gpt_steps in (1, 7, 1000):
        steps = equal_compute_steps(gpt, net, batch, gpt_steps)
        assert steps == max(1, round(gpt_steps * ratio))
    assert equal_compute_steps(gpt, net, batch, 1000) < 1000
    with pytest.raises(ValueError, match="gpt_steps"):
        equal_compute_steps(gpt, net, batch, 0)


def test_unmasked_positions_get_no_gradient_and_masked_ones_do():
    net = model().train()
    tokens = torch.randint(0, K, (8, L))
    _, mask = random_mask(tokens, MASK, "cosine", torch.Generator().manual_seed(5))
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["logits"] = output

    handle = net.head.register_forward_hook(keep)
    masked_cross_entropy(net, tokens, generator=torch.Generator().manual_seed(5)).backward()
    handle.remove()
    grad = captured["logits"].grad  # (B, L, K)
    assert grad[~mask].abs().max() == 0
    assert grad[mask].abs().sum(-1).min() > 0


def test_gradient_reaches_every_parameter():
    net = model(num_classes=2).train()
    tokens, cond = torch.randint(0, K, (16, L)), torch.randint(0, 2, (16,))
    maskgit_loss(net, (tokens, cond))["loss"].backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [], f"no gradient reaches {missing}"


# ----------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decoding_masks_follow_the_schedule_and_keep_unmasked_tokens_fixed(schedule):
    net, steps = model(num_classes=2), 5
    torch.manual_seed(0)
    states = net.decode(6, torch.tensor([0, 1, 0, 1, 0, 1]), steps=steps, schedule=schedule)
    assert states.shape == (steps + 1, 6, L)
    assert (states[0] == MASK).all()
    n_masked = (states == MASK).sum(-1)  # (T + 1, n)
    expected = torch.tensor([L] + mask_counts(L, steps, schedule))[:, None].expand(-1, 6)
    assert torch.equal(n_masked, expected)
    for before, after in zip(states[:-1], states[1:]):
        known = before != MASK
        assert torch.equal(after[known], before[known]), "an unmasked token changed"
    assert states[-1].min() >= 0 and states[-1].max() < K


def test_decoding_from_given_tokens_keeps_them():
    net = model()
    start = torch.randint(0, K, (4, L))
    start[:, 3:9] = MASK  # six unknown positions in the middle
    torch.manual_seed(0)
    final = net.sample(4, steps=3, tokens=start)
    assert torch.equal(final[:, :3], start[:, :3]) and torch.equal(final[:, 9:], start[:, 9:])
    assert (final != MASK).all()


def test_zero_choice_temperature_keeps_the_most_confident_tokens():
    net = model()
    torch.manual_seed(1)
    states = net.decode(5, steps=3, choice_temperature=0.0, top_k=1)  # greedy: deterministic
    logits = net(states[0])
    confidence = torch.log_softmax(logits, -1).amax(-1)  # of the greedy tokens
    kept = states[1] != MASK  # (n, L)
    for row in range(5):
        lowest_kept = confidence[row][kept[row]].min()
        highest_remasked = confidence[row][~kept[row]].max()
        assert lowest_kept >= highest_remasked
    torch.testing.assert_close(states[1][kept], logits.argmax(-1)[kept], rtol=0, atol=0)


def test_choice_noise_is_gumbel_and_vanishes_with_its_temperature():
    net = model()
    torch.manual_seed(2)
    sharp = net.decode(50, steps=4, choice_temperature=0.0, top_k=1)
    torch.manual_seed(2)
    tiny = net.decode(50, steps=4, choice_temperature=1e-4, top_k=1)
    torch.manual_seed(2)
    noisy = net.decode(50, steps=4, choice_temperature=20.0, top_k=1)
    assert torch.equal(tiny, sharp)  # a little noise does not reorder clearly different confidences
    assert not torch.equal(noisy[1] == MASK, sharp[1] == MASK)  # a lot of noise picks other positions


def test_network_evaluations_are_counted_one_per_step_and_one_per_gpt_token():
    net = model()
    for steps in (1, 4, L):
        with count_forward_calls(net.head) as calls:
            net.sample(3, steps=steps)
        assert calls.count == steps
    gpt = GPT(GPTConfig(vocab_size=K, block_size=L, n_layer=1, n_head=2, n_embd=16))
    for use_cache in (True, False):
        with count_forward_calls(gpt.head) as calls:
            gpt.sample(3, L, use_cache=use_cache)
        assert calls.count == L
    with count_forward_calls(net.head) as calls:
        pass
    assert calls.count == 0
    net(torch.zeros(1, L, dtype=torch.long))  # the hook is removed after the block
    assert calls.count == 0


# ----------------------------------------------------------------------------- guidance

def test_guided_logits_follow_the_formula():
    c, u = torch.randn(4, K), torch.randn(4, K)
    torch.testing.assert_close(guided_logits(c, u, 1.0), c)
    torch.testing.assert_close(guided_logits(c, u, 0.0), u)
    torch.testing.assert_close(guided_logits(c, u, 3.0), u + 3 * (c - u))
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        guided_logits(c, u, -1.0)
    with pytest.raises(ValueError, match="same shape"):
        guided_logits(c, u[:2], 2.0)


def test_class_dropout_adds_a_no_class_token_used_without_labels_and_while_training():
    net = model(num_classes=3, class_dropout=0.5)
    assert net.start.num_embeddings == 4 and model(num_classes=3).start.num_embeddings == 3
    tokens = torch.full((64, L), MASK)
    labelled, free = net(tokens, torch.ones(64, dtype=torch.long)), net(tokens)
    torch.testing.assert_close(free, net(tokens, None))
    assert (labelled - free).abs().amax() > 1e-4, "no class and class 1 must differ"
    torch.manual_seed(0)
    trained = net.train()(tokens, torch.ones(64, dtype=torch.long))  # dropout is 0: only labels are hidden
    as_free = (trained - free).abs().amax((1, 2)) < 1e-5  # (64,) rows whose label was hidden
    as_labelled = (trained - labelled).abs().amax((1, 2)) < 1e-5
    assert torch.equal(as_free, ~as_labelled) and 16 < int(as_free.sum()) < 48  # about half of 64
    assert net.eval().sample(3, None, steps=2).shape == (3, L)  # decoding without a label


def test_guidance_decodes_from_the_guided_logits_with_two_evaluations_per_step():
    net, labels = model(num_classes=3, class_dropout=0.1), torch.tensor([0, 1, 2, 1])
    start = torch.full((4, L), MASK)
    guided = guided_logits(net(start, labels), net(start), 2.5)  # (4, L, K) by hand
    torch.manual_seed(0)
    one_step = net.sample(4, labels, steps=1, top_k=1, choice_temperature=0.0, guidance=2.5)
    assert torch.equal(one_step, guided.argmax(-1))  # greedy: every code is the guided argmax
    assert not torch.equal(one_step, net(start, labels).argmax(-1))
    for guidance, per_step in ((1.0, 1), (2.5, 2)):
        with count_forward_calls(net.head) as calls:
            net.sample(4, labels, steps=3, guidance=guidance)
        assert calls.count == 3 * per_step
    torch.manual_seed(1)
    plain = net.sample(4, labels, steps=3)
    torch.manual_seed(1)
    assert torch.equal(net.sample(4, labels, steps=3, guidance=1.0), plain)


def test_guidance_needs_labels_and_a_model_trained_without_them():
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="class_dropout > 0"):
        model(num_classes=3).sample(2, labels, steps=2, guidance=2.0)
    with pytest.raises(ValueError, match="class_dropout > 0"):
        model(num_classes=3, class_dropout=0.1).sample(2, None, steps=2, guidance=2.0)
    with pytest.raises(ValueError, match="guidance must be"):
        model(num_classes=3, class_dropout=0.1).sample(2, labels, steps=2, guidance=-0.5)
    with pytest.raises(ValueError, match="class_dropout"):
        MaskGITConfig(vocab_size=K, block_size=L, class_dropout=0.1)  # unconditional: nothing to drop
    with pytest.raises(ValueError, match="class_dropout"):
        MaskGITConfig(vocab_size=K, block_size=L, num_classes=3, class_dropout=1.0)


# ----------------------------------------------------------------------------- the any-order bound

def _order_bits(net: MaskGIT, z: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """-log2 p_order(z) of sequences z (B, L): reveal the positions in ``order``, one at a time."""
    seen, bits = torch.full_like(z, net.config.mask_id), torch.zeros(len(z), dtype=torch.float64)
    for i in order:
        bits -= torch.log_softmax(net(seen), -1)[torch.arange(len(z)), i, z[:, i]].double() / math.log(2)
        seen[:, i] = z[:, i]
    return bits  # (B,)


def test_any_order_bits_estimates_the_mean_over_orders_of_proper_likelihoods():
    import itertools

    k, l = 3, 3
    torch.manual_seed(0)
    net = MaskGIT(MaskGITConfig(vocab_size=k, block_size=l, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
        every_map = torch.tensor(list(itertools.product(range(k), repeat=l)))  # (k^l, l)
        orders = list(itertools.permutations(range(l)))
        for order in orders[:2]:  # each order is a proper distribution over all maps
            total = torch.exp2(-_order_bits(net, every_map, order)).sum()
            assert total.item() == pytest.approx(1.0, abs=1e-6)
        z = every_map[[5, 17]]
        exact = torch.stack([_order_bits(net, z, o) for o in orders]).mean(0) / l  # (2,) bits per token
        estimate = any_order_bits(net, z.repeat_interleave(400, 0), draws=5, batch_size=300)  # (800,)
    torch.testing.assert_close(estimate.view(2, 400).mean(1), exact, rtol=0.03, atol=0)


def test_any_order_bits_is_seeded_and_checks_its_input():
    net = model(num_classes=2)
    tokens, cond = torch.randint(0, K, (6, L)), torch.tensor([0, 1] * 3)
    bits = any_order_bits(net, tokens, cond, draws=2, batch_size=4)
    assert bits.shape == (6,) and bits.dtype == torch.float64 and (bits > 0).all()
    assert torch.equal(any_order_bits(net, tokens, cond, draws=2, batch_size=4), bits)
    with pytest.raises(ValueError, match="draws"):
        any_order_bits(net, tokens, cond, draws=0)
    with pytest.raises(ValueError, match=r"codes in \[0, 7\)"):
        any_order_bits(net, torch.full((2, L), MASK), cond[:2])


# ----------------------------------------------------------------------------- training, state

@pytest.mark.parametrize("training", [True, False])
def test_masked_bits_scores_in_eval_mode_and_restores_the_mode(training):
    net = model(dropout=0.5).train(training)
    tokens = torch.randint(0, K, (10, L), generator=torch.Generator().manual_seed(1))
    score = masked_bits(net, tokens, seed=3, batch_size=4)
    assert net.training == training
    assert masked_bits(net, tokens, seed=3, batch_size=4) == score  # no dropout, the same seeded masks


def test_overfit_one_batch():
    torch.manual_seed(0)
    net = MaskGIT(MaskGITConfig(vocab_size=K, block_size=L, n_layer=2, n_head=2, n_embd=32, num_classes=8))
    tokens, cond = torch.randint(0, K, (8, L)), torch.arange(8)  # the label identifies the sequence
    before = masked_bits(net, tokens, cond, seed=0)
    fit(net, maskgit_loss, torch.utils.data.TensorDataset(tokens, cond),
        TrainConfig(steps=150, batch_size=8, lr=3e-3, log_every=50), progress=False)
    after = masked_bits(net, tokens, cond, seed=0)
    assert before == pytest.approx(math.log2(K), rel=0.05)
    assert after < before / 10


def test_save_load_round_trip_and_eval_changes_no_buffer():
    net = model(num_classes=2)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    other = MaskGIT(net.config).eval()
    other.load_state_dict(torch.load(buffer))
    tokens, cond = torch.randint(0, K + 1, (3, L)), torch.tensor([0, 1, 1])
    torch.testing.assert_close(other(tokens, cond), net(tokens, cond))
    states = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()(tokens, cond)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in states.items())


# ----------------------------------------------------------------------------- bad input

def test_bad_input_gets_a_message_that_says_what_was_expected():
    net, conditional = model(), model(num_classes=3)
    tokens = torch.randint(0, K, (2, L))
    with pytest.raises(TypeError, match="torch.long"):
        net(tokens.float())
    with pytest.raises(ValueError, match=r"mask id 7"):
        net(tokens + 2)
    with pytest.raises(ValueError, match=r"mask id 7"):
        net(tokens - 1)
    with pytest.raises(ValueError, match=r"codes in \[0, 7\)"):
        masked_cross_entropy(net, torch.full((2, L), MASK))  # the mask is not a target
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        net(tokens[:, None])
    with pytest.raises(ValueError, match="block_size"):
        net(torch.zeros(2, L + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        net(torch.zeros(0, L, dtype=torch.long))
    with pytest.raises(ValueError, match="class-conditional"):
        conditional(tokens)
    with pytest.raises(ValueError, match="unconditional"):
        net.sample(2, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="steps"):
        net.sample(2, steps=0)
    with pytest.raises(ValueError, match="steps"):
        net.sample(2, steps=L + 1)
    with pytest.raises(ValueError, match="temperature"):
        net.sample(2, temperature=0.0)
    with pytest.raises(ValueError, match="choice_temperature"):
        net.sample(2, choice_temperature=-1.0)
    with pytest.raises(ValueError, match="schedule"):
        net.sample(2, schedule="exponential")
    with pytest.raises(ValueError, match=r"shape \(3, 12\)"):
        net.sample(3, tokens=torch.full((2, L), MASK))
    with pytest.raises(ValueError, match="same number of masked"):
        net.sample(2, steps=1, tokens=torch.tensor([[MASK] * L, [0] + [MASK] * (L - 1)]))
    with pytest.raises(ValueError, match="number of samples"):
        net.sample(0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gamma(1.5)
    with pytest.raises(ValueError, match="schedule"):
        MaskGITConfig(vocab_size=K, block_size=L, schedule="sigmoid")
    with pytest.raises(ValueError, match="divisible"):
        MaskGITConfig(vocab_size=K, block_size=L, n_head=3, n_embd=16)
    with pytest.raises(ValueError, match="label_smoothing"):
        MaskGITConfig(vocab_size=K, block_size=L, label_smoothing=1.0)
    with pytest.raises(ValueError, match="cache"):
        net.blocks[0].attn(torch.zeros(1, 2, 16), cache=object())
