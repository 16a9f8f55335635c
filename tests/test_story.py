"""Chapter 10's pieces: the story generator, the story prior, its judges and editing in code space."""

import dataclasses

import pytest
import torch

from vqlib.data.mnist import mnist
from vqlib.data.stories import (POSITIONS, Plan, State, StoryConfig, character_sheet, digit_box, draw,
                                make_stories, sheet_views, view_index)
from vqlib.judges.panels import (InstanceJudge, InstanceJudgeConfig, PanelJudge, PanelJudgeConfig, ink_crop,
                                 panel_pairs, read_panels)
from vqlib.priors.story_prior import StoryPrior, StoryPriorConfig, logits_of_zeros, story_prior_loss
from vqlib.recipes.ch10_stories import (Conditions, caption_words, choose_sampler, conditions, consistency, decode,
                                        edit_codes, edit_masks, edit_plans, encode, illustrate,
                                        illustrate_like_seed004, paint_of, panel_tokenizer_config)
from vqlib.tokenizers.conditional import ConditionalVQVAE, conditional_vqvae_loss

CONFIG = StoryConfig()


@pytest.fixture(scope="module")
def digits():
    return {split: mnist(split, "smoke").tensors for split in ("train", "test")}


def test_stories_are_deterministic_shaped_and_use_the_split_instances(digits):
    x, y = digits["train"]
    a, b = make_stories(x, y, 12, CONFIG, seed=3), make_stories(x, y, 12, CONFIG, seed=3)
    assert torch.equal(a.panels, b.panels) and a.plans == b.plans
    assert a.panels.shape == (12, CONFIG.panels, 3, CONFIG.side, CONFIG.side)
    assert a.panels.min() >= 0 and a.panels.max() <= 1
    assert torch.equal(a.digits, y[a.instances])
    assert len(set(a.instances.tolist())) == 12  # one instance per story while there are enough
    assert not torch.equal(a.panels, make_stories(x, y, 12, CONFIG, seed=4).panels)


def test_train_and_test_stories_share_no_instance(digits):
    train = make_stories(*digits["train"], 40, CONFIG)
    test = make_stories(*digits["test"], 40, CONFIG)
    seen = {tuple(v.flatten().tolist()) for v in digits["train"][0][train.instances]}
    assert not any(tuple(v.flatten().tolist()) in seen for v in digits["test"][0][test.instances])


def test_every_sentence_changes_one_thing_and_captions_follow():
    plan = Plan(7, State(0, 0, 0), (("jump", 3), ("grow", -1), ("turn", 2)))
    assert plan.sentences(CONFIG.colours) == ["a small red seven stands at the top left", "it jumps to the bottom right",
                                              "it grows", "it turns blue"]
    assert plan.captions(CONFIG.colours)[-1] == "a large blue seven at the bottom right"
    edited = plan.edited(1, 1)
    assert edited.captions(CONFIG.colours)[1:] == ["a small red seven at the top right",
                                                   "a large red seven at the top right",
                                                   "a large blue seven at the top right"]
    with pytest.raises(ValueError, match="only a jump or a turn"):
        plan.edited(2, 1)
    with pytest.raises(ValueError, match="must change"):
        plan.edited(1, 3)


def test_the_drawing_lies_in_its_box_and_styles_differ(digits):
    x = digits["train"][0][:1].repeat(3, 1, 1, 1)
    ones = torch.ones(3, dtype=torch.long)
    panels = draw(x, ones * 3, ones, torch.tensor([[0.9, 0.1, 0.1]] * 3), torch.arange(3), CONFIG)
    top, left, side = digit_box(3, 1, CONFIG)
    outside = panels.clone()
    outside[..., top:top + side, left:left + side] = 0
    background = panels[..., :1, :1]
    assert ((outside - background).abs().amax(1)[..., :top, :] < 0.2).all()  # only the paper's texture there
    assert (panels[0] - panels[1]).abs().mean() > 0.1 and (panels[0] - panels[2]).abs().mean() > 0.01



def test_a_sheet_holds_the_ink_of_every_panel_the_story_can_draw(digits):
    x, y = digits["train"]
    stories = make_stories(x, y, 6, CONFIG)
    views = len(sheet_views(CONFIG))
    assert views == 8 and stories.sheets.shape == (6, views, 1, CONFIG.side, CONFIG.side)
    assert stories.inks.shape == (6, CONFIG.panels, 1, CONFIG.side, CONFIG.side)
    for i in range(6):
        for p, state in enumerate(stories.plans[i].states()):  # a panel's ink is its sheet's view, whatever its colour
            assert torch.equal(stories.inks[i, p], stories.sheets[i, view_index(state, CONFIG)])
    assert torch.equal(character_sheet(x[stories.instances], CONFIG), stories.sheets)
    full = StoryConfig.for_profile("full")
    assert len(sheet_views(full)) == 24 and view_index(State(1, 1, 0, 2), full) == 2 * 8 + 4 + 1
    with pytest.raises(ValueError, match="leaning"):
        view_index(State(0, 0, 0, 1), CONFIG)


def test_the_panel_tokenizer_encodes_ink_and_paints_what_it_is_told(digits):
    stories = make_stories(*digits["test"], 4, CONFIG)
    torch.manual_seed(0)
    tokenizer = ConditionalVQVAE(panel_tokenizer_config(CONFIG, "smoke")).eval()
    codes = encode(tokenizer, stories.inks)  # (4, P, h, w)
    assert codes.shape == (4, CONFIG.panels, 6, 6)
    paint = paint_of(stories)  # (N·P, 3 + styles)
    assert paint.shape == (4 * CONFIG.panels, 3 + len(CONFIG.styles))
    assert torch.equal(paint[:, 3:].argmax(1), stories.styles.repeat_interleave(CONFIG.panels))
    panels = decode(tokenizer, codes.flatten(0, 1), paint)
    assert panels.shape == (4 * CONFIG.panels, 3, CONFIG.side, CONFIG.side) and 0 <= panels.min() <= panels.max() <= 1
    other = paint.clone()
    other[:, 3:] = other[:, 3:].roll(1, dims=1)  # another style, the same codes
    assert not torch.allclose(decode(tokenizer, codes.flatten(0, 1), other), panels)
    loss = conditional_vqvae_loss(tokenizer.train(), (stories.inks.flatten(0, 1) - 0.5, paint,
                                                      stories.panels.flatten(0, 1) - 0.5))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and tokenizer.condition.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="condition"):
        tokenizer.decode(codes[:, 0], paint[:3])
    with pytest.raises(ValueError, match="one paint row"):
        decode(tokenizer, codes.flatten(0, 1), paint[:2])


def test_bad_inputs_name_what_was_expected(digits):
    x = digits["train"][0][:2]
    two = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        draw(x[:, :, :20], two, two, torch.zeros(2, 3), two, CONFIG)
    with pytest.raises(ValueError, match="positions"):
        draw(x, two + len(POSITIONS), two, torch.zeros(2, 3), two, CONFIG)
    with pytest.raises(ValueError, match="colours"):
        StoryConfig(colours=("red", "mauve"))
    with pytest.raises(ValueError, match="first sentence"):
        Plan(1, State(0, 0, 0), (("jump", 1),)).edited(0, 2)


VIEWS = len(sheet_views(CONFIG))


def _prior(grid=(6, 6), k=16):
    words = caption_words(CONFIG)
    torch.manual_seed(0)
    config = StoryPriorConfig.for_profile(k, grid, VIEWS, len(CONFIG.styles), words.words, words.length,
                                          profile="smoke")
    return StoryPrior(config), words


def _conditions(prior, words, n=3):
    g = torch.Generator().manual_seed(1)
    k = prior.config.vocab_size
    return Conditions(torch.arange(n) % len(CONFIG.styles), words.encode(["a small red seven at the top left"] * n),
                      torch.randint(k, (n, VIEWS, *prior.config.grid), generator=g))


def test_story_prior_is_causal_and_reads_its_conditions():
    prior, words = _prior()
    cond = _conditions(prior, words)
    codes = torch.randint(16, (3, 6, 6))
    later = codes.clone()
    later[:, 4:] = (later[:, 4:] + 1) % 16
    context, aligned = prior.context(cond.style, cond.text, cond.reference)
    a = prior.gpt(codes.flatten(1)[:, :-1], context=context, aligned=aligned)
    b = prior.gpt(later.flatten(1)[:, :-1], context=context, aligned=aligned)
    torch.testing.assert_close(a[:, :23], b[:, :23])  # row t predicts code t + 1: rows < 24 - 1 see only codes < 24
    other = Conditions(cond.style, cond.text, (cond.reference + 1) % 16)
    assert not torch.allclose(prior.nll(codes, *vars(cond).values()), prior.nll(codes, *vars(other).values()))
    one_view = cond.reference.clone()
    one_view[:, 3, 2, 2] = (one_view[:, 3, 2, 2] + 1) % 16  # the sheet at place 14, in one view
    nll_rows = lambda ref: prior.gpt._logits(codes.flatten(1)[:, :-1], None, context=context,
                                             aligned=prior.context(cond.style, cond.text, ref)[1])
    moved = (nll_rows(one_view) - nll_rows(cond.reference)).abs().amax((0, 2))  # (rows,)
    p = context.shape[1]
    assert moved[p + 14] > 0 and moved[: p + 14].max() == 0  # only the row predicting code 14 reads it
    with pytest.raises(ValueError, match="one per token"):
        prior.gpt.nll(codes.flatten(1), context=context, aligned=aligned[:, :5])
    with pytest.raises(ValueError, match="V=8"):
        prior.nll(codes, cond.style, cond.text, cond.reference[:, 0])  # one view is not a sheet
    loss = story_prior_loss(prior.train(), (codes, cond.style, cond.text, cond.reference))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and prior.no_character.grad is not None or prior.gpt.tok_emb.weight.grad is not None


def test_sampling_with_the_cache_matches_greedy_decoding_by_hand():
    prior, words = _prior()
    cond = _conditions(prior, words)
    sampled = prior.sample(cond.style, cond.text, cond.reference, top_k=1)
    tokens = torch.zeros(3, 0, dtype=torch.long)
    with torch.no_grad():
        context, aligned = prior.context(cond.style, cond.text, cond.reference)
        for _ in range(36):
            logits = prior.gpt.next_logits(tokens, context=context, aligned=aligned)
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(sampled.flatten(1), tokens)


def test_guidance_with_unit_weights_is_plain_conditional_sampling():
    prior, words = _prior()
    cond = _conditions(prior, words)
    levels = prior.guided_levels(cond.style, cond.text, cond.reference)
    with torch.no_grad():
        logits = logits_of_zeros(prior, *levels)
        plain = logits_of_zeros(prior, cond.style, cond.text, cond.reference)
    torch.testing.assert_close(prior.guide(logits, (1.0, 1.0, 1.0)), plain)
    assert not torch.allclose(prior.guide(logits, (3.0, 2.0, 2.0)), plain)


def test_an_edit_keeps_every_code_outside_its_mask():
    prior, words = _prior()
    cond = _conditions(prior, words)
    codes = torch.randint(16, (3, 6, 6))
    mask = torch.zeros(3, 6, 6, dtype=torch.bool)
    mask[:, 1:4, 2:5] = True
    edited = edit_codes(prior, codes, mask, cond, (2.0, 1.5, 1.5), temperature=1.0)
    assert torch.equal(edited[~mask], codes[~mask])
    assert not torch.equal(edited[mask], codes[mask])
    with pytest.raises(ValueError, match="both"):
        prior.sample(cond.style, cond.text, cond.reference, given=codes)


def test_edit_plans_and_masks_cover_the_changed_panels(digits):
    stories = make_stories(*digits["test"], 10, CONFIG)
    edited, plans = edit_plans(stories)
    assert edited and all(plans[i] != stories.plans[i] for i in edited)
    for i in edited:
        mask = edit_masks(stories.plans[i], plans[i], CONFIG, (6, 6))
        changed = [a != b for a, b in zip(stories.plans[i].states(), plans[i].states())]
        assert [bool(m.any()) for m in mask] == changed


def test_seed004_sampler_and_the_book_sampler_give_grids(digits):
    prior, words = _prior()
    stories = make_stories(*digits["test"], 2, CONFIG)
    cond = conditions(stories, words, torch.randint(16, (2, VIEWS, 6, 6)))
    assert illustrate(prior, cond, (2.0, 1.0, 1.0), 1.0).shape == (6, 6, 6)
    assert illustrate(prior, cond, (1.0, 1.0, 1.0), 1.0, character=False).shape == (6, 6, 6)
    assert illustrate_like_seed004(prior, cond, (2.0, 1.0, 1.0), 1.0).shape == (6, 6, 6)


def test_judges_read_panels_and_pairs(digits):
    stories = make_stories(*digits["test"], 20, CONFIG)
    crops = ink_crop(stories.panels[:, 0])
    assert crops.shape == (20, 1, 16, 16) and crops.amax((1, 2, 3)).min() > 0.5  # the drawing was found
    judge = PanelJudge(PanelJudgeConfig.for_profile(3, 3, profile="smoke"))
    read = read_panels(judge, stories.panels[:, 0])
    assert set(read) == {"digit", "position", "size", "colour", "style"} and read["digit"].shape == (20,)
    pairs = panel_pairs(stories, 10)
    assert pairs.tensors[2].sum() >= 1 and len(pairs) >= 5
    instance = InstanceJudge(InstanceJudgeConfig.for_profile(profile="smoke")).eval()
    a, b = stories.panels[:4, 0], stories.panels[:4, 1]
    torch.testing.assert_close(instance(a, b), instance(b, a))  # symmetric
    assert consistency(instance, stories.panels[:4]).shape == (4,)
    with pytest.raises(ValueError, match=r"\(N, 3, S, S\)"):
        judge(stories.panels[:, 0, :1])


def test_full_profile_stories_are_larger():
    full = StoryConfig.for_profile("full")
    assert full.side > CONFIG.side and full.panels > CONFIG.panels and len(full.styles) > len(CONFIG.styles)
    assert dataclasses.replace(full, panels=2).panels == 2


def test_against_target_reads_the_interval():
    from vqlib.book.verdicts import against_target
    from vqlib.core.metrics import Interval

    assert against_target(Interval(80, 75, 85), 70) == "meets the target"
    assert against_target(Interval(60, 55, 65), 70) == "misses the target"
    assert against_target(Interval(70, 65, 75), 70) == "is within noise of the target"
    with pytest.raises(TypeError, match="Interval"):
        against_target(0.8, 0.7)


def test_the_sampler_is_chosen_by_the_best_mean_rate_on_the_stories_given(digits):
    stories = make_stories(*digits["test"], 4, CONFIG)
    torch.manual_seed(0)
    tokenizer = ConditionalVQVAE(panel_tokenizer_config(CONFIG, "smoke")).eval()
    prior, words = _prior(k=tokenizer.config.codebook_size)
    judge = PanelJudge(PanelJudgeConfig.for_profile(3, 3, profile="smoke")).eval()
    instance = InstanceJudge(InstanceJudgeConfig.for_profile(profile="smoke")).eval()
    grid = ((1.0, 0.5), (3.0, 1.0))
    choice = choose_sampler(prior, tokenizer, stories, words, judge, instance, grid)
    assert list(choice.table) == list(grid)
    for rates in choice.table.values():
        assert set(rates) == {"digit", "position", "size", "colour", "style", "consistency", "mean"}
        assert all(0 <= v <= 1 for v in rates.values())
        assert rates["mean"] == pytest.approx(sum(v for k, v in rates.items() if k != "mean") / 6)
    best = max(grid, key=lambda g: choice.table[g]["mean"])
    assert choice.guidance == (best[0], 1.0, 1.0) and choice.temperature == best[1]
    with pytest.raises(ValueError, match="at least one"):
        choose_sampler(prior, tokenizer, stories, words, judge, instance, ())


def test_a_leaning_character_tips_its_top_and_only_full_stories_lean(digits):
    from vqlib.data.stories import LEANS, lean

    bar = torch.zeros(3, 1, 28, 28)
    bar[..., 4:24, 13:15] = 1  # a vertical stroke through the centre
    tipped = lean(bar, torch.arange(3))
    columns = torch.arange(28.0)

    def centre(rows):  # the mean column of the ink in some rows, per image
        ink = tipped[:, 0, rows].sum(1)
        return (ink * columns).sum(1) / ink.sum(1)

    top, bottom = centre(slice(4, 9)), centre(slice(19, 24))
    assert LEANS[1] == "leaning left" and top[1] < 13 < bottom[1]
    assert LEANS[2] == "leaning right" and top[2] > 14 > bottom[2]
    torch.testing.assert_close(tipped[0], bar[0], atol=1e-5, rtol=0)  # upright: unchanged

    full = StoryConfig.for_profile("full")
    stories = make_stories(*digits["train"], 30, full)
    assert stories.leans.shape == (30, full.panels) and set(stories.leans.unique().tolist()) == {0, 1, 2}
    i, p = map(int, (stories.leans > 0).nonzero()[0])
    assert LEANS[int(stories.leans[i, p])] in stories.captions(i)[p]
    assert any(s.startswith("it leans") or s == "it stands up straight" for s in stories.sentences(i))
    quick = make_stories(*digits["train"], 30, CONFIG)
    assert not quick.leans.any() and not any("leaning" in c for c in quick.all_captions())
    with pytest.raises(ValueError, match="leans"):
        draw(bar, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.rand(3, 3),
             torch.zeros(3, dtype=torch.long), CONFIG, leans=torch.full((3,), 3))
