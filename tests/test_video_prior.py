"""The video prior: caption conditioning, causality over video tokens, the KV cache, continuation, bad input.

A tiny stand-in video tokenizer (block means quantised to K levels) replaces the trained one of
``vqlib.tokenizers.video``: the prior and the continuation helpers only need ``encode``, ``decode`` and
``latent_shape``.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqlib.priors.base import bits_per_dim
from vqlib.priors.gpt import GPT
from vqlib.priors.text import CaptionTokenizer
from vqlib.priors.video_prior import (VideoPrior, VideoPriorConfig, continue_video, copy_last_frame, prompt_indices,
                                      temporal_stride, to_grid, to_sequence, video_prior_loss)
from vqlib.recipes.ch09_video_generation import train_video_prior
from vqlib.training.loop import TrainConfig

K, T, S = 5, 4, 8  # codes, frames, frame side
CAPTIONS = ["a 3 moves left", "a 7 moves down", "an 8 moves up", "a 3 moves right"]


class BlockTokenizer(nn.Module):
    """Stand-in tokenizer: the mean of each 2×4×4 block, quantised to K levels -> codes (B, T/2, S/4, S/4).

    With ``peek`` the code of latent frame j also averages latent frame j + 1, like a 3D
    convolution that looks ahead in time (the clip's codes then depend on later frames).
    """

    def __init__(self, peek: bool = False) -> None:
        super().__init__()
        self.peek = peek
        self.unused = nn.Parameter(torch.zeros(()))  # a parameter, so that in_batches finds the device
        self.latent_shape = (T // 2, S // 4, S // 4)

    def encode(self, videos: torch.Tensor) -> torch.Tensor:
        m = F.avg_pool3d(videos.transpose(1, 2), (2, 4, 4))[:, 0]  # (B, t, h, w)
        if self.peek:
            m = (m + torch.cat([m[:, 1:], m[:, -1:]], dim=1)) / 2
        return (m * (K - 1)).round().long()

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        v = indices.float() / (K - 1)  # (B, t, h, w)
        v = v.repeat_interleave(2, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)  # (B, T, S, S)
        return v[:, :, None]  # (B, T, 1, S, S)


def caption_tokenizer() -> CaptionTokenizer:
    return CaptionTokenizer.fit(CAPTIONS)


def prior(captions: bool = True, **overrides) -> VideoPrior:
    torch.manual_seed(0)
    tok = caption_tokenizer() if captions else None
    config = VideoPriorConfig.for_profile(K, BlockTokenizer().latent_shape, tok, profile="smoke",
                                          **{"n_layer": 2, "n_head": 2, "n_embd": 16} | overrides)
    model = VideoPrior(config).eval()
    with torch.no_grad():  # larger weights than GPT-2's init, so that every dependence is clearly visible
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


def grids(n: int) -> torch.Tensor:
    return torch.randint(0, K, (n, *BlockTokenizer().latent_shape))  # (n, t, h, w)


def test_shapes_and_dtypes():
    model, tok = prior(), caption_tokenizer()
    L = model.config.tokens
    assert L == 2 * 2 * 2 and model.config.gpt_config().block_size == tok.length + L
    text = tok.encode(CAPTIONS)
    tokens = to_sequence(grids(4))
    assert model(tokens[:, :5], text).shape == (4, 5, K)
    assert model.nll(to_grid(tokens, model.config.latent_shape), text).shape == (4,)
    samples = model.sample(3, captions=CAPTIONS[:3])
    assert samples.shape == (3, *model.config.latent_shape) and samples.dtype == torch.long
    assert 0 <= samples.min() and samples.max() < K


def test_without_captions_the_prior_is_exactly_the_gpt():
    model = prior(captions=False)
    tokens = to_sequence(grids(3))
    torch.testing.assert_close(model(tokens), GPT.forward(model.gpt, tokens))
    torch.testing.assert_close(model.nll(to_grid(tokens, model.config.latent_shape)), model.gpt.nll(tokens))


def test_logits_depend_on_the_caption_at_every_position_and_on_every_word():
    model, tok = prior(), caption_tokenizer()
    tokens = to_sequence(grids(1)).repeat(2, 1)
    text = tok.encode(CAPTIONS[:2])  # two different captions for the same tokens
    logits = model(tokens, text)
    assert ((logits[0] - logits[1]).abs().amax(-1) > 1e-4).all()
    first = model.gpt.next_logits(tokens[:, :0], context=model.context(text))  # the first token: caption alone
    for word in range(tok.length):
        changed = text.clone()
        changed[:, word] = (changed[:, word] + 1) % tok.vocab_size
        assert (model.gpt.next_logits(tokens[:, :0], context=model.context(changed)) - first).abs().max() > 1e-4, \
            f"word {word} ignored"


def test_logits_at_i_never_depend_on_later_video_tokens():
    model, tok = prior(), caption_tokenizer()
    text = tok.encode(CAPTIONS[:1])
    tokens = to_sequence(grids(1))
    L = tokens.shape[1]
    logits = model(tokens, text)
    for i in range(L):
        later = tokens.clone()
        later[:, i + 1:] = (later[:, i + 1:] + torch.randint(1, K, (1, L - i - 1))) % K
        torch.testing.assert_close(model(later, text)[:, i], logits[:, i], atol=1e-6, rtol=0)
        changed = tokens.clone()
        changed[:, i] = (changed[:, i] + 1) % K
        assert (model(changed, text)[:, i] - logits[:, i]).abs().max() > 1e-4, f"logits at {i} ignore token {i}"


def test_nll_equals_the_chain_rule_computed_one_token_at_a_time():
    model, tok = prior(), caption_tokenizer()
    text, tokens = tok.encode(CAPTIONS), to_sequence(grids(4))
    by_hand = torch.zeros(4)
    for i in range(tokens.shape[1]):  # -log p(token i | caption, tokens < i), from the prefix alone
        logits = model.gpt.next_logits(tokens[:, :i], context=model.context(text))  # (B, K)
        by_hand += F.cross_entropy(logits, tokens[:, i], reduction="none")
    torch.testing.assert_close(model.nll(to_grid(tokens, model.config.latent_shape), text),
                               by_hand / tokens.shape[1])


def test_empty_caption_is_the_default_and_bits_per_dim_is_the_mean_nll():
    model = prior()
    g = grids(5)
    torch.testing.assert_close(model.nll(g), model.nll(g, caption_tokenizer().encode([""] * 5)))
    expected = model.nll(g, caption_tokenizer().encode(CAPTIONS + CAPTIONS[:1])).mean().item() / math.log(2)
    text = model.caption_tokens(CAPTIONS + CAPTIONS[:1], 5)  # (5, P) word ids: the prior's cond
    assert bits_per_dim(model, g, text, batch_size=2) == pytest.approx(expected, rel=1e-5)
    empty = model.nll(g).mean().item() / math.log(2)
    assert bits_per_dim(model, g, batch_size=2) == pytest.approx(empty, rel=1e-5)


def test_cached_and_uncached_sampling_agree_and_the_prompt_is_kept():
    model = prior()
    prompt = grids(3)[:, :1]  # the first latent frame
    runs = []
    for use in (True, False):
        torch.manual_seed(3)
        runs.append(model.sample(3, captions=CAPTIONS[:3], prompt=prompt, temperature=1.2, use_cache=use))
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, :1], prompt)
    # token by token (not seed 004's one pass): each greedy token is the argmax given the tokens drawn before it
    greedy = model.sample(3, captions=CAPTIONS[:3], top_k=1)
    logits = model(to_sequence(greedy), model.caption_tokens(CAPTIONS[:3], 3))  # row i predicts token i + 1
    assert torch.equal(to_sequence(greedy)[:, 1:], logits[:, :-1].argmax(-1))


def test_loss_applies_caption_dropout_only_while_training():
    model = prior(caption_dropout=0.5)
    g, text = grids(4), caption_tokenizer().encode(CAPTIONS)
    assert video_prior_loss(model.eval(), (g, text))["loss"].item() == pytest.approx(model.nll(g, text).mean().item())
    model.train()
    torch.manual_seed(1)
    drop = torch.rand(4) < 0.5
    torch.manual_seed(1)
    loss = video_prior_loss(model, (g, text))["loss"]
    torch.testing.assert_close(loss, model.nll(g, text.masked_fill(drop[:, None], 0)).mean())
    loss.backward()
    assert model.text.tok_emb.weight.grad.abs().sum() > 0  # the text encoder is trained with the prior


def test_overfits_one_batch_and_the_checkpoint_round_trips():
    torch.manual_seed(0)
    config = VideoPriorConfig.for_profile(K, BlockTokenizer().latent_shape, caption_tokenizer(), profile="smoke",
                                          n_layer=2, n_embd=32, caption_dropout=0.0)
    model = VideoPrior(config)
    g = grids(4)
    before = model.nll(g, caption_tokenizer().encode(CAPTIONS)).mean().item()
    train = TrainConfig(steps=150, batch_size=4, lr=1e-2, log_every=50)
    history = train_video_prior(model, g, CAPTIONS, train, "test-video-prior", progress=False)
    after = model.eval().nll(g, caption_tokenizer().encode(CAPTIONS)).mean().item()
    assert after < 0.2 * before, (before, after)
    again = VideoPrior(config)
    history2 = train_video_prior(again, g, CAPTIONS, train, "test-video-prior", progress=False)  # loads
    assert history2.steps == history.steps
    torch.manual_seed(5)
    a = model.sample(4, captions=CAPTIONS)
    torch.manual_seed(5)
    assert torch.equal(again.eval().sample(4, captions=CAPTIONS), a)


def test_eval_changes_no_buffer():
    model = prior()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.nll(grids(2), caption_tokenizer().encode(CAPTIONS[:2]))
    model.sample(2, captions=CAPTIONS[:2])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_inputs_are_clear_errors():
    model, tok = prior(), caption_tokenizer()
    with pytest.raises(ValueError, match="unknown word"):
        model.sample(1, captions=["a 3 moves diagonally"])
    with pytest.raises(ValueError, match="one caption per sample, 2 in all, got 1"):
        model.sample(2, captions=CAPTIONS[:1])
    with pytest.raises(ValueError, match="leaves nothing to generate.*t = 2"):
        model.sample(1, prompt=grids(1))  # a prompt as long as the whole context
    with pytest.raises(ValueError, match="codes of the first latent frames"):
        model.sample(2, prompt=grids(1)[:, :1])
    with pytest.raises(ValueError, match="more than the model's context"):
        model(torch.zeros(1, 9, dtype=torch.long), tok.encode(CAPTIONS[:1]))
    with pytest.raises(TypeError, match="torch.long"):
        model.nll(grids(1).float())
    with pytest.raises(ValueError, match="grids of codes"):
        model.nll(torch.zeros(1, 2, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="caption tokens for 2 clips"):
        model.nll(grids(2), tok.encode(CAPTIONS[:1]))
    with pytest.raises(ValueError, match="trained without captions"):
        prior(captions=False).sample(1, captions=["a 3 moves left"])
    with pytest.raises(ValueError, match="both words and caption_length"):
        VideoPriorConfig(K, (2, 2, 2), words=("<pad>", "a"))


def test_prompt_codes_come_from_the_prompt_frames_only():
    tokenizer = BlockTokenizer(peek=True)  # codes of latent frame 0 look at frames 2 and 3
    videos = torch.rand(6, T, 1, S, S)
    videos[:, 2:] = 0.0
    other = videos.clone()
    other[:, 2:] = 1.0  # a different future
    assert temporal_stride(tokenizer, T) == 2
    codes = prompt_indices(tokenizer, videos[:, :2], T)
    assert codes.shape == (6, 1, 2, 2)
    assert torch.equal(codes, prompt_indices(tokenizer, other[:, :2], T))
    assert not torch.equal(tokenizer.encode(videos)[:, :1], tokenizer.encode(other)[:, :1])  # the leak avoided
    assert torch.equal(codes, tokenizer.encode(copy_last_frame(videos[:, :2], T))[:, :1])


def test_continue_video_shapes_prompt_and_baseline():
    tokenizer, model = BlockTokenizer(), prior()
    videos = torch.rand(3, T, 1, S, S)
    out = continue_video(model, tokenizer, videos[:, :2], T, captions=CAPTIONS[:3])
    assert out.shape == videos.shape
    torch.testing.assert_close(out[:, :2], tokenizer.decode(prompt_indices(tokenizer, videos[:, :2], T))[:, :2])
    base = copy_last_frame(videos[:, :2], T)
    assert torch.equal(base[:, 2], videos[:, 1]) and torch.equal(base[:, 3], videos[:, 1])


def test_continuation_prompts_that_do_not_fit_are_clear_errors():
    tokenizer, model = BlockTokenizer(), prior()
    videos = torch.rand(2, T, 1, S, S)
    with pytest.raises(ValueError, match="multiple of 2 frames; got 3"):
        prompt_indices(tokenizer, videos[:, :3], T)
    with pytest.raises(ValueError, match="leaves nothing to predict"):
        continue_video(model, tokenizer, videos, T)
    with pytest.raises(ValueError, match="longer than the 4 frames"):
        copy_last_frame(torch.rand(1, 6, 1, S, S), T)
    with pytest.raises(ValueError, match=r"\(B, T, C, S, S\)"):
        prompt_indices(tokenizer, videos[0], T)
    with pytest.raises(ValueError, match="do not map onto"):
        temporal_stride(tokenizer, 5)


def test_guidance_one_is_plain_sampling_and_greedy_guidance_follows_the_guided_logits():
    model, tok = prior(), caption_tokenizer()
    torch.manual_seed(4)
    plain = model.sample(4, captions=CAPTIONS, temperature=1.1)
    torch.manual_seed(4)
    assert torch.equal(model.sample(4, captions=CAPTIONS, temperature=1.1, guidance=1.0), plain)
    w = 2.5
    runs = [model.sample(4, captions=CAPTIONS, top_k=1, guidance=w, use_cache=use) for use in (True, False)]
    assert torch.equal(runs[0], runs[1])
    tokens = to_sequence(runs[0])
    text, empty = tok.encode(CAPTIONS), tok.encode([""] * 4)
    with_caption, without = (torch.stack([model.gpt.next_logits(tokens[:, :i], context=model.context(t))
                                          for i in range(tokens.shape[1])], dim=1)  # (B, L, K): row i predicts token i
                             for t in (text, empty))
    guided = without + w * (with_caption - without)
    assert torch.equal(guided.argmax(-1), tokens)


def test_guidance_needs_captions():
    with pytest.raises(ValueError, match="guidance needs"):
        prior().sample(2, guidance=2.0)
    with pytest.raises(ValueError, match="guidance needs"):
        prior(captions=False).sample(2, captions=CAPTIONS[:2], guidance=2.0)
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        prior().sample(2, captions=CAPTIONS[:2], guidance=-1.0)
