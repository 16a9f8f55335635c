"""GPT prior: causality, the start token, the key/value cache, sampling, conditioning, bad input.

What every prior shares (normalisation, save/load, overfitting, bits/dim) is tested in test_priors.py.
"""

import pytest
import torch

from vqlib.priors.gpt import GPT, GPTConfig, KVCache

K, L = 7, 12


def model(**kwargs) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=K, block_size=L, n_layer=2, n_head=2, n_embd=16) | kwargs
    gpt = GPT(GPTConfig(**config)).eval()
    with torch.no_grad():  # larger weights than GPT-2's init, so that every dependence is clearly visible
        for p in gpt.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return gpt


def test_shapes_and_dtypes():
    gpt = model(num_classes=3)
    tokens, cond = torch.randint(0, K, (2, 5)), torch.tensor([0, 2])
    logits = gpt(tokens, cond)
    assert logits.shape == (2, 5, K) and logits.dtype == torch.float32
    assert gpt.nll(tokens, cond).shape == (2,)
    samples = gpt.sample(3, L, cond=torch.tensor([1, 1, 2]))
    assert samples.shape == (3, L) and samples.dtype == torch.long
    assert samples.min() >= 0 and samples.max() < K


def test_logits_at_t_depend_on_tokens_up_to_t_and_never_on_later_ones():
    gpt = model()
    tokens = torch.randint(0, K, (1, L))
    logits = gpt(tokens)
    for t in range(L):
        later = tokens.clone()
        later[:, t + 1:] = (later[:, t + 1:] + torch.randint(1, K, (1, L - t - 1))) % K
        torch.testing.assert_close(gpt(later)[:, t], logits[:, t], atol=1e-6, rtol=0)
        for s in range(t + 1):  # every token <= t matters
            changed = tokens.clone()
            changed[:, s] = (changed[:, s] + 1) % K
            assert (gpt(changed)[:, t] - logits[:, t]).abs().max() > 1e-4, f"logits at {t} ignore token {s}"




def test_cached_logits_equal_full_forward_logits():
    gpt = model(num_classes=2)
    tokens, cond = torch.randint(0, K, (3, L)), torch.tensor([1, 0, 1])
    full = gpt._logits(tokens, cond)  # (B, L + 1, K): row 0 from the class token alone
    caches = [KVCache() for _ in gpt.blocks]
    pieces = [gpt._logits(tokens[:, :4], cond, caches)]  # prefill: class token + 4 tokens at once
    pieces += [gpt._logits(tokens[:, 4:6], cond, caches)]  # two new tokens on top of a cache
    pieces += [gpt._logits(tokens[:, t:t + 1], cond, caches) for t in range(6, L)]  # one at a time
    assert len(caches[0]) == L + 1
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_cached_and_uncached_sampling_agree_exactly(num_classes):
    gpt = model(num_classes=num_classes)
    cond = torch.tensor([0, 1, 2, 2, 1]) if num_classes else None
    greedy = [gpt.sample(5, L, cond, top_k=1, use_cache=use) for use in (True, False)]
    assert torch.equal(greedy[0], greedy[1])
    random = []
    for use in (True, False):
        torch.manual_seed(7)
        random.append(gpt.sample(5, L, cond, temperature=1.3, top_k=4, use_cache=use))
    assert torch.equal(random[0], random[1])
    assert not torch.equal(random[0], greedy[0])


def test_greedy_sample_is_the_argmax_of_its_own_logits():
    gpt = model()
    samples = gpt.sample(4, L, top_k=1)
    assert torch.equal(gpt(samples)[:, :-1].argmax(-1), samples[:, 1:])
    first = gpt.sample(4, 1, top_k=1)  # token 0 is the argmax of the start token's prediction
    assert torch.equal(first, samples[:, :1])


def test_prefix_is_kept_and_continued():
    gpt = model()
    prefix = torch.randint(0, K, (3, 5))
    for use_cache in (True, False):
        samples = gpt.sample(3, L, prefix=prefix, top_k=1, use_cache=use_cache)
        assert torch.equal(samples[:, :5], prefix)
        assert torch.equal(gpt(samples)[:, 4:-1].argmax(-1), samples[:, 5:])
    assert torch.equal(gpt.sample(3, 5, prefix=prefix), prefix)




def test_class_label_changes_every_position_including_the_first():
    gpt = model(num_classes=3)
    tokens = torch.randint(0, K, (1, L)).expand(2, L)
    cond = torch.tensor([0, 1])
    nll_per_token = torch.nn.functional.cross_entropy(
        gpt._logits(tokens[:, :-1], cond).transpose(1, 2), tokens, reduction="none")  # (2, L)
    assert ((nll_per_token[0] - nll_per_token[1]).abs() > 1e-4).all()






def test_bad_input_gets_a_message_that_says_what_was_expected():
    gpt, conditional = model(), model(num_classes=3)
    tokens = torch.randint(0, K, (2, L))
    with pytest.raises(TypeError, match="torch.long"):
        gpt(tokens.float())
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        gpt(tokens - 1)
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        gpt(tokens[:, None])
    with pytest.raises(ValueError, match="block_size"):
        gpt(torch.zeros(2, L + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        gpt.nll(torch.zeros(2, L + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        gpt.sample(2, L + 1)
    with pytest.raises(ValueError, match="unconditional"):
        gpt(tokens, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class-conditional"):
        conditional(tokens)
    with pytest.raises(ValueError, match="class-conditional"):
        conditional.sample(2, L)
    with pytest.raises(ValueError, match="temperature"):
        gpt.sample(2, L, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        gpt.sample(2, L, top_k=0)
    with pytest.raises(ValueError, match="prefix"):
        gpt.sample(2, 4, prefix=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="prefix"):
        gpt.sample(3, L, prefix=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.long"):
        gpt.sample(2, L, prefix=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=K, block_size=L, n_head=3, n_embd=16)
    context = torch.randn(2, 3, 16)  # (B, P, C)
    with pytest.raises(ValueError, match=r"after 3 context vectors.*block_size"):
        gpt(tokens, context=context)  # P + L > block_size
    with pytest.raises(ValueError, match=r"\(2, P, 16\)"):
        gpt(tokens[:, :4], context=context[:, :, :8])
    with pytest.raises(ValueError, match=r"\(2, P, 16\)"):
        gpt(tokens[:, :4], context=context[:1])
    with pytest.raises(TypeError, match="float vectors"):
        gpt(tokens[:, :4], context=context.long())
    with pytest.raises(ValueError, match="block_size - P"):
        gpt.sample(2, L, context=context)


# ----------------------------------------------------------------------------- a context before the tokens

P = 3  # context vectors


def test_context_conditions_every_position_and_causality_still_holds():
    gpt = model()
    tokens, context = torch.randint(0, K, (1, L - P)).repeat(2, 1), torch.randn(2, P, 16)
    logits = gpt(tokens, context=context)  # (2, L - P, K): row t predicts token t + 1
    assert logits.shape == (2, L - P, K)
    assert ((logits[0] - logits[1]).abs().amax(-1) > 1e-4).all()  # a different context changes every row
    for p in range(P):  # and every context vector matters, for the first token too
        changed = context.clone()
        changed[:, p] = torch.randn(2, 16)  # (a constant shift would vanish in the LayerNorm)
        assert (gpt.next_logits(tokens[:, :0], context=changed) - gpt.next_logits(tokens[:, :0], context=context)
                ).abs().max() > 1e-4, f"context vector {p} ignored"
    for t in range(L - P):
        later = tokens.clone()
        later[:, t + 1:] = (later[:, t + 1:] + 1) % K
        torch.testing.assert_close(gpt(later, context=context)[:, t], logits[:, t], atol=1e-6, rtol=0)


def test_nll_with_a_context_is_the_chain_rule_and_the_cache_agrees():
    gpt = model()
    tokens, context = torch.randint(0, K, (3, L - P)), torch.randn(3, P, 16)
    by_hand = torch.zeros(3)
    for t in range(L - P):  # -log p(token t | context, tokens < t), from the prefix alone
        logits = gpt.next_logits(tokens[:, :t], context=context)  # (B, K)
        by_hand += torch.nn.functional.cross_entropy(logits, tokens[:, t], reduction="none")
    torch.testing.assert_close(gpt.nll(tokens, context=context), by_hand / (L - P))
    caches = [KVCache() for _ in gpt.blocks]
    steps = [gpt.next_logits(tokens[:, :1], context=context, caches=caches)]  # prefill: start, context, token 0
    steps += [gpt.next_logits(tokens[:, t:t + 1], caches=caches) for t in range(1, L - P - 1)]  # the cache holds it
    assert len(caches[0]) == 1 + P + L - P - 1
    torch.testing.assert_close(torch.stack(steps, dim=1), gpt(tokens, context=context)[:, :-1], atol=1e-5, rtol=1e-5)


def test_greedy_sample_with_a_context_is_the_argmax_of_its_own_logits():
    gpt = model()
    context = torch.randn(4, P, 16)
    samples = [gpt.sample(4, L - P, top_k=1, context=context, use_cache=use) for use in (True, False)]
    assert torch.equal(samples[0], samples[1]) and samples[0].shape == (4, L - P)
    assert torch.equal(gpt(samples[0], context=context)[:, :-1].argmax(-1), samples[0][:, 1:])
    assert not torch.equal(samples[0], gpt.sample(4, L - P, top_k=1, context=torch.randn(4, P, 16)))


def test_the_cache_cuts_the_counted_matrix_work_of_sampling_to_one_token_per_step():
    """Counted multiply-adds (``call_flops``; on the CPU torch counts the linear layers' matrix
    products): without the cache step t feeds t + 1 positions, with it one, so the ratio is
    (L + 1) / 2 for L tokens, the same on every run."""
    from vqlib.core.compute import call_flops

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=7, block_size=9, n_layer=2, n_head=2, n_embd=16)).eval()
    with_cache = call_flops(lambda: gpt.sample(3, 9, use_cache=True))
    without = call_flops(lambda: gpt.sample(3, 9, use_cache=False))
    assert with_cache > 0 and without / with_cache == pytest.approx((9 + 1) / 2)
    assert call_flops(lambda: gpt.sample(6, 9, use_cache=True)) == 2 * with_cache  # linear in the samples
