"""Caption tokenizer and text encoder: round trips, padding, unknown words, shapes, bidirectionality, bad input."""

import pytest
import torch

from vqlib.priors.text import PAD, CaptionTokenizer, TextEncoder, TextEncoderConfig

CAPTIONS = ["a 3 moves left", "an 8 moves up", "a 3 moves left while a 7 moves down"]


def test_fit_builds_a_sorted_vocabulary_with_pad_first_and_the_longest_length():
    tok = CaptionTokenizer.fit(CAPTIONS)
    assert tok.words[0] == PAD and list(tok.words[1:]) == sorted(tok.words[1:])
    assert set(tok.words[1:]) == {w for c in CAPTIONS for w in c.split()}
    assert tok.length == 9 and tok.vocab_size == len(tok.words)


def test_round_trip_and_padding():
    tok = CaptionTokenizer.fit(CAPTIONS)
    ids = tok.encode(CAPTIONS)
    assert ids.shape == (3, 9) and ids.dtype == torch.long
    assert (ids[0, 4:] == 0).all() and (ids[2] != 0).all()  # short captions are padded with PAD (id 0)
    assert tok.decode(ids) == CAPTIONS
    assert tok.encode("A 3  Moves LEFT").tolist() == tok.encode("a 3 moves left").tolist()  # case, spaces


def test_the_empty_caption_is_all_pads():
    tok = CaptionTokenizer.fit(CAPTIONS)
    assert tok.encode([""]).tolist() == [[0] * 9]
    assert tok.decode(tok.encode([""])) == [""]


def test_unknown_words_and_too_long_captions_are_clear_errors():
    tok = CaptionTokenizer.fit(CAPTIONS[:2])  # one-digit captions: no "while"
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['diagonally'\].*vocabulary"):
        tok.encode("a 3 moves diagonally")
    with pytest.raises(ValueError, match="unknown word"):
        tok.encode("a 3 moves left while a 7 moves down")
    with pytest.raises(ValueError, match="unknown word"):
        tok.encode(f"a 3 {PAD} left")  # the pad is not a word a caption may use
    short = CaptionTokenizer(tok.words, length=2)
    with pytest.raises(ValueError, match="4 words, more than the 2"):
        short.encode("a 3 moves left")
    with pytest.raises(TypeError, match="must be a str"):
        tok.encode([3])
    with pytest.raises(ValueError, match="at least one caption"):
        tok.encode([])
    with pytest.raises(ValueError, match="start with"):
        CaptionTokenizer(("a", "b"), 3)


def encoder(**kwargs) -> TextEncoder:
    torch.manual_seed(0)
    tok = CaptionTokenizer.fit(CAPTIONS)
    return TextEncoder(TextEncoderConfig(tok.vocab_size, tok.length, **{"n_layer": 2, "n_head": 2, "n_embd": 16} | kwargs)).eval()


def test_encoder_shapes_and_every_word_sees_the_whole_caption():
    tok, enc = CaptionTokenizer.fit(CAPTIONS), encoder()
    ids = tok.encode(CAPTIONS)
    out = enc(ids)
    assert out.shape == (3, 9, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % tok.vocab_size  # change the LAST word only
    assert (enc(changed)[:, 0] - out[:, 0]).abs().max() > 1e-4  # the first vector depends on it: not causal


def test_encoder_gradient_reaches_the_word_embeddings_and_save_load_round_trip(tmp_path):
    tok, enc = CaptionTokenizer.fit(CAPTIONS), encoder()
    enc.train()
    enc(tok.encode(CAPTIONS)).square().mean().backward()
    assert enc.tok_emb.weight.grad.abs().sum() > 0
    enc.eval()
    torch.save(enc.state_dict(), tmp_path / "enc.pt")
    again = TextEncoder(enc.config)
    again.load_state_dict(torch.load(tmp_path / "enc.pt"))
    ids = tok.encode(CAPTIONS)
    torch.testing.assert_close(again.eval()(ids), enc(ids))


def test_encoder_rejects_bad_tokens():
    enc = encoder()
    with pytest.raises(TypeError, match="torch.long"):
        enc(torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"shape \(B, 9\)"):
        enc(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="must lie in"):
        enc(torch.full((1, 9), 99, dtype=torch.long))
    with pytest.raises(ValueError, match="n_head dividing n_embd"):
        TextEncoderConfig(10, 4, n_head=3, n_embd=16)
