"""Chapter 10: illustrating a story with one character, in a chosen style, and editing it in code space.

What is in it: ``story_sets`` (the chapter's train, validation and test stories, from disjoint MNIST
instances), ``caption_words`` (the caption vocabulary, from every possible caption), the panel
tokenizer (``train_panel_tokenizer``: ``vqlib.tokenizers.conditional.ConditionalVQVAE``, which encodes a
panel's ink layer and draws the painted panel told its colour and style, ``paint_condition`` and ``paint_of``), the prior
(``train_story_prior``: ``vqlib.priors.story_prior.StoryPrior`` on the codes of every training panel
with its caption, style and the codes of the views of its character sheet), the samplers (``illustrate``: token by
token with the cache; ``illustrate_like_seed004``: seed 004's one pass over zeros, every position
drawn independently; without the character it is the "independent panels" baseline), the
measurements (``consistency``, ``mixed_characters``, ``faithfulness``), the sampler's settings chosen on
validation stories (``choose_sampler``) and editing (``edit_plans``, ``edit_masks``, ``edit_codes``).

Dimension key: N stories, P panels per story, S panel side, h w code grid, K codebook size, f the
tokenizer's downsampling factor.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from vqlib.core.device import model_device, to_device
from vqlib.core.inference import in_batches
from vqlib.core.profile import pick, seed_everything
from vqlib.data.mnist import mnist
from vqlib.data.stories import (DIGIT_NAMES, LEANS, POSITIONS, SIZES, Plan, State, Stories, StoryConfig, caption,
                                colour_table, digit_box, make_stories, view_index)
from vqlib.judges.panels import HEADS, InstanceJudge, PanelJudge, read_panels, same_character
from vqlib.priors.base import sample_from_logits
from vqlib.priors.story_prior import StoryPrior, StoryPriorConfig, logits_of_zeros, story_prior_loss
from vqlib.priors.text import CaptionTokenizer
from vqlib.tokenizers.conditional import ConditionalVQVAE, ConditionalVQVAEConfig, conditional_vqvae_loss
from vqlib.training.checkpoints import checkpoint_path, data_digest
from vqlib.training.loop import History, TrainConfig, fit


# ----------------------------------------------------------------------------- data

@dataclass(frozen=True)
class StorySets:
    train: Stories
    val: Stories
    test: Stories


def story_sets(profile: str | None = None) -> StorySets:
    """The chapter's stories: characters from the MNIST train, validation and test splits (disjoint)."""
    config = StoryConfig.for_profile(profile)
    counts = dict(train=pick(48, 3000, 20_000, profile=profile), val=pick(8, 100, 500, profile=profile),
                  test=pick(8, 100, 500, profile=profile))
    sets = {}
    for k, (split, n) in enumerate(counts.items()):
        images, labels = mnist(split, profile).tensors
        sets[split] = make_stories(images, labels, n, config, seed=k)
    return StorySets(**sets)


def caption_words(config: StoryConfig) -> CaptionTokenizer:
    """The caption vocabulary, fitted on every caption a panel can have (so no split meets an unknown word)."""
    axes = (range(len(LEANS)) if config.lean else range(1), range(len(SIZES)), range(len(config.colours)),
            range(len(DIGIT_NAMES)), range(len(POSITIONS)))
    captions = [caption(digit, State(position, size, colour, lean), config.colours)
                for lean, size, colour, digit, position in itertools.product(*axes)]
    return CaptionTokenizer.fit(captions)


# ----------------------------------------------------------------------------- the panel tokenizer

OFFSET = 0.5  # the tokenizer reads ink minus 0.5 and draws panels minus 0.5: centred values train faster


def panel_tokenizer_config(config: StoryConfig, profile: str | None = None) -> ConditionalVQVAEConfig:
    """The panel tokenizer: it encodes a panel's ink layer (1 channel) and draws the painted panel (3),
    told the panel's colour (RGB) and style (one-hot)."""
    return ConditionalVQVAEConfig.for_profile(profile, in_channels=1, out_channels=3, downsample=4,
                                              condition_dim=3 + len(config.styles), **pick(
        smoke=dict(codebook_size=32), quick=dict(hidden=48, res_hidden=16, res_blocks=1, codebook_size=128,
                                                 code_dim=16),
        full=dict(hidden=128, codebook_size=512, code_dim=32), profile=profile))


def panel_tokenizer_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    # quick: many small batches; steps of 16 panels reconstructed strokes and colours far better than half
    # as many steps of 32 at the same cost. Validation panels: 1500 steps 28.2 dB, 3000 steps 30.2 dB; 2000
    # keeps the chapter well inside its 3 minutes
    defaults = dict(steps=pick(10, 2000, 20_000, profile=profile), batch_size=pick(8, 16, 64, profile=profile),
                    lr=2e-3, cosine=True, log_every=pick(5, 100, 200, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def paint_condition(config: StoryConfig, colours: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """What the decoder is told of panels in colours and styles (M,) long (indices into the config's
    colours and styles): the colour's RGB and the style one-hot -> (M, 3 + styles)."""
    return torch.cat([colour_table(config)[colours], F.one_hot(styles, len(config.styles)).float()], dim=1)


def paint_of(stories: Stories, plans: tuple[Plan, ...] | None = None,
             styles: torch.Tensor | None = None) -> torch.Tensor:
    """``paint_condition`` of every panel of ``stories`` (or of the same characters with other
    ``plans``, or in other ``styles`` (N,) long) -> (N·P, 3 + styles)."""
    truth = panel_truth(stories, plans)
    style = truth["style"] if styles is None else styles.repeat_interleave(stories.config.panels)
    return paint_condition(stories.config, truth["colour"], style)


def train_panel_tokenizer(stories: Stories, profile: str | None = None,
                          progress: bool | None = None) -> tuple[ConditionalVQVAE, History]:
    """The panel tokenizer trained on the panels of ``stories``: ink layer in, painted panel out (or
    loaded from the cache)."""
    config = panel_tokenizer_config(stories.config, profile)
    train_config = panel_tokenizer_train_config(profile)
    seed_everything(train_config.seed)
    data = TensorDataset(stories.inks.flatten(0, 1) - OFFSET, paint_of(stories),
                         stories.panels.flatten(0, 1) - OFFSET)  # (N·P, 1, S, S), (N·P, E), (N·P, 3, S, S)
    model = ConditionalVQVAE(config)
    history = fit(model, conditional_vqvae_loss, data, train_config, progress=progress,
                  checkpoint=checkpoint_path("ch10-panel-tokenizer", config, train_config,
                                             {"data": data_digest(*data.tensors)}))
    return model.eval(), history


def encode(tokenizer: ConditionalVQVAE, ink: torch.Tensor) -> torch.Tensor:
    """Ink layers (..., 1, S, S) in [0, 1] -> codes (..., h, w) long, on the CPU."""
    codes = in_batches(lambda b: tokenizer.encode(b - OFFSET), tokenizer, ink.reshape(-1, *ink.shape[-3:]))
    return codes.view(*ink.shape[:-3], *codes.shape[-2:])


def decode(tokenizer: ConditionalVQVAE, codes: torch.Tensor, paint: torch.Tensor) -> torch.Tensor:
    """Codes (M, h, w) painted as ``paint`` (M, 3 + styles) says (``paint_of``) -> panels (M, 3, S, S)
    in [0, 1], on the CPU."""
    if len(codes) != len(paint):
        raise ValueError(f"need one paint row per code map: {len(codes)} code maps, {len(paint)} rows")
    return in_batches(lambda c, p: (tokenizer.decode(c, p) + OFFSET).clamp(0, 1), tokenizer, (codes, paint))


# ----------------------------------------------------------------------------- the prior

@dataclass(frozen=True)
class Conditions:
    """What the prior reads for each panel, flattened story after story: N·P rows, on the CPU."""

    style: torch.Tensor  # (N·P,) long
    text: torch.Tensor  # (N·P, P_words) long caption ids
    reference: torch.Tensor  # (N·P, V, h, w) long: the codes of the views of the story's character sheet


def conditions(stories: Stories, words: CaptionTokenizer, sheet_codes: torch.Tensor,
               plans: tuple[Plan, ...] | None = None) -> Conditions:
    """The conditions of every panel of ``stories`` (or of the same characters with other ``plans``)."""
    plans = stories.plans if plans is None else plans
    p = stories.config.panels
    captions = [c for plan in plans for c in plan.captions(stories.config.colours)]
    return Conditions(stories.styles.repeat_interleave(p), words.encode(captions),
                      sheet_codes.repeat_interleave(p, 0))


def story_prior_train_config(profile: str | None = None, **overrides) -> TrainConfig:
    defaults = dict(steps=pick(10, 800, 20_000, profile=profile), batch_size=pick(8, 24, 64, profile=profile),
                    lr=pick(5e-3, 4e-3, 1e-3, profile=profile), warmup_steps=pick(0, 20, 500, profile=profile),
                    cosine=True, log_every=pick(5, 50, 200, profile=profile))
    return TrainConfig(**{**defaults, **overrides})


def train_story_prior(tokenizer: ConditionalVQVAE, stories: Stories, words: CaptionTokenizer,
                      profile: str | None = None, progress: bool | None = None,
                      **overrides) -> tuple[StoryPrior, History]:
    """The story prior trained on the codes of every panel of ``stories`` with its caption, style and
    the codes of its character sheet (or loaded from the cache); ``overrides`` change the TrainConfig."""
    codes, sheet_codes = encode(tokenizer, stories.inks), encode(tokenizer, stories.sheets)  # (N, P | V, h, w)
    cond = conditions(stories, words, sheet_codes)
    config = StoryPriorConfig.for_profile(tokenizer.config.codebook_size, codes.shape[-2:], sheet_codes.shape[1],
                                          len(stories.config.styles), words.words, words.length, profile=profile)
    train_config = story_prior_train_config(profile, **overrides)
    seed_everything(train_config.seed)
    data = TensorDataset(codes.flatten(0, 1), cond.style, cond.text, cond.reference)
    model = StoryPrior(config)
    history = fit(model, story_prior_loss, data, train_config, progress=progress,
                  checkpoint=checkpoint_path("ch10-story-prior", config, train_config,
                                             {"data": data_digest(*data.tensors)}))
    return model.eval(), history


# ----------------------------------------------------------------------------- sampling

def _on(prior: StoryPrior, cond: Conditions, character: bool) -> tuple[torch.Tensor, ...]:
    reference = cond.reference if character else torch.full_like(cond.reference, prior.config.vocab_size)
    return to_device((cond.style, cond.text, reference), model_device(prior))


def illustrate(prior: StoryPrior, cond: Conditions, guidance: tuple[float, float, float],
               temperature: float, character: bool = True, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Codes for every panel, drawn token by token with the cache -> (N·P, h, w) on the CPU. Without
    ``character`` the reference is "no character": every panel is drawn independently of the others."""
    torch.manual_seed(seed)
    style, text, reference = _on(prior, cond, character)
    return torch.cat([prior.sample(style[i:i + batch_size], text[i:i + batch_size], reference[i:i + batch_size],
                                   guidance, temperature).cpu() for i in range(0, len(style), batch_size)])


@torch.no_grad()
def illustrate_like_seed004(prior: StoryPrior, cond: Conditions, guidance: tuple[float, float, float],
                            temperature: float, seed: int = 0) -> torch.Tensor:
    """Seed 004's sampler on this prior: one forward pass whose inputs are zeros, then every position
    drawn independently from its own logits -> (N·P, h, w). Same conditions and guidance as ``illustrate``."""
    torch.manual_seed(seed)
    levels = prior.guided_levels(*_on(prior, cond, True))
    logits = prior.guide(logits_of_zeros(prior, *levels), guidance)  # (N·P, L, K)
    codes = sample_from_logits(logits.flatten(0, 1), temperature).view(len(logits), *prior.config.grid)
    return codes.cpu()


def chosen_views(prior: StoryPrior, cond: Conditions) -> torch.Tensor:
    """The view of the sheet each panel's caption weighs most -> (N·P,) long, on the CPU."""
    return in_batches(lambda t: prior.view_weights(prior.text(t)).argmax(1), prior, cond.text)


def panel_views(stories: Stories) -> torch.Tensor:
    """The view of the sheet each panel of ``stories`` shows -> (N·P,) long."""
    return torch.tensor([view_index(s, stories.config) for plan in stories.plans for s in plan.states()])


# ----------------------------------------------------------------------------- measurements

def consistency(judge: InstanceJudge, panels: torch.Tensor) -> torch.Tensor:
    """Per story (N, P, 3, S, S), 1.0 if the judge says every pair of its panels shows one character -> (N,)."""
    n, p = panels.shape[:2]
    pairs = list(itertools.combinations(range(p), 2))
    a = torch.cat([panels[:, i] for i, _ in pairs])  # (pairs·N, 3, S, S)
    b = torch.cat([panels[:, j] for _, j in pairs])
    same = same_character(judge, a, b).view(len(pairs), n)
    return same.all(0).float()


def mixed_characters(stories: Stories, seed: int = 0) -> torch.Tensor:
    """The chance level of consistency: each story's panels, panel j taken from another story whose
    character has the same class and style (another writer) -> (N, P, 3, S, S)."""
    rng = np.random.default_rng(seed)
    key = (stories.digits * 100 + stories.styles).numpy()
    out = stories.panels.clone()
    for i in range(len(stories)):
        others = np.flatnonzero((key == key[i]) & (stories.instances.numpy() != int(stories.instances[i])))
        if len(others):
            for j in range(1, stories.config.panels):
                out[i, j] = stories.panels[int(rng.choice(others)), j]
    return out


def panel_truth(stories: Stories, plans: tuple[Plan, ...] | None = None) -> dict[str, torch.Tensor]:
    """What every panel should show: {head: (N·P,) long} for ``stories`` (or the same characters with ``plans``)."""
    plans = stories.plans if plans is None else plans
    p = stories.config.panels
    states = [s for plan in plans for s in plan.states()]
    return {"digit": stories.digits.repeat_interleave(p),
            "position": torch.tensor([s.position for s in states]), "size": torch.tensor([s.size for s in states]),
            "colour": torch.tensor([s.colour for s in states]), "style": stories.styles.repeat_interleave(p)}


def faithfulness(judge: PanelJudge, panels: torch.Tensor, truth: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per panel (M, 3, S, S) and head, 1.0 if the judge reads back what it should show -> {head: (M,)}."""
    read = read_panels(judge, panels)
    return {k: (read[k] == truth[k]).float() for k in HEADS}


# ----------------------------------------------------------------------------- the sampler's settings

SAMPLER_GRID = tuple(itertools.product((1.0, 2.0, 3.0), (0.5, 1.0)))  # (character weight, temperature)


@dataclass(frozen=True)
class SamplerChoice:
    guidance: tuple[float, float, float]  # (character, style, caption): the chosen character weight, then 1, 1
    temperature: float
    table: dict[tuple[float, float], dict[str, float]]  # (w_char, temperature) -> each rate (0-1), and their "mean"


def choose_sampler(prior: StoryPrior, tokenizer: ConditionalVQVAE, stories: Stories, words: CaptionTokenizer,
                   panel_judge: PanelJudge, instance_judge: InstanceJudge,
                   grid: tuple[tuple[float, float], ...] = SAMPLER_GRID, seed: int = 0) -> SamplerChoice:
    """The character weight and temperature of ``grid`` under which validation ``stories`` score best.

    Each setting illustrates every story (style and caption weights 1) and is scored by the six rates
    the chapter's targets are about: the panel judge's read-back of the digit, position, size, colour
    and style, and the share of stories the instance judge finds consistent; the best setting has the
    highest mean of the six.
    """
    if not grid:
        raise ValueError("grid must hold at least one (character weight, temperature) pair")
    cond = conditions(stories, words, encode(tokenizer, stories.sheets))
    paint = paint_of(stories)
    truth = panel_truth(stories)
    c = stories.config
    table = {}
    for w_char, temperature in grid:
        codes = illustrate(prior, cond, (w_char, 1.0, 1.0), temperature, seed=seed)
        x = decode(tokenizer, codes, paint).view(len(stories), c.panels, 3, c.side, c.side)
        rates = {k: float(v.mean()) for k, v in faithfulness(panel_judge, x.flatten(0, 1), truth).items()}
        rates["consistency"] = float(consistency(instance_judge, x).mean())
        table[(w_char, temperature)] = {**rates, "mean": sum(rates.values()) / len(rates)}
    w_char, temperature = max(table, key=lambda k: table[k]["mean"])
    return SamplerChoice((w_char, 1.0, 1.0), temperature, table)


# ----------------------------------------------------------------------------- editing in code space

def edit_plans(stories: Stories, seed: int = 0) -> tuple[list[int], tuple[Plan, ...]]:
    """One edit per story that has a jump or a turn: that sentence (the last such) changed to another
    place or colour -> (the indices of the edited stories, all plans with the edits)."""
    rng = np.random.default_rng(seed)
    edited, plans = [], list(stories.plans)
    n_colours = len(stories.config.colours)
    for i, plan in enumerate(stories.plans):
        movable = [k for k, (kind, _) in enumerate(plan.actions, start=1) if kind in ("jump", "turn")]
        if not movable:
            continue
        k = movable[-1]
        kind, old = plan.actions[k - 1]
        before = plan.states()[k - 1]
        current = before.position if kind == "jump" else before.colour
        choices = [v for v in range(len(POSITIONS) if kind == "jump" else n_colours) if v not in (old, current)]
        plans[i] = plan.edited(k, int(rng.choice(choices)))
        edited.append(i)
    return edited, tuple(plans)


def edit_masks(old: Plan, new: Plan, config: StoryConfig, grid: tuple[int, int]) -> torch.Tensor:
    """The codes an edit must redraw: in every panel whose state changed, the codes under the old and
    the new drawing -> (P, h, w) bool."""
    h, w = grid
    f = config.side // h
    mask = torch.zeros(config.panels, h, w, dtype=torch.bool)
    for p, (a, b) in enumerate(zip(old.states(), new.states())):
        if a != b:
            for state in (a, b):
                top, left, side = digit_box(state.position, state.size, config)
                mask[p, top // f:-(-(top + side) // f), left // f:-(-(left + side) // f)] = True
    return mask


def kept_outside(old: torch.Tensor, new: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per panel, the fraction of the codes outside ``mask`` that ``new`` keeps from ``old``: (M, h, w) -> (M,)."""
    outside = (~mask).flatten(1).float()  # (M, L)
    same = (old == new).flatten(1).float()
    return (same * outside).sum(1) / outside.sum(1).clamp_min(1)


def change_outside(old: torch.Tensor, new: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per panel, the mean absolute pixel change (over channels) of panels (M, 3, S, S) outside the pixels
    of the code ``mask`` (M, h, w) -> (M,)."""
    f = old.shape[-1] // mask.shape[-1]
    outside = (~mask).repeat_interleave(f, 1).repeat_interleave(f, 2).float()  # (M, S, S)
    change = (new - old).abs().mean(1)  # (M, S, S)
    return (change * outside).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp_min(1)


def edit_codes(prior: StoryPrior, codes: torch.Tensor, mask: torch.Tensor, cond: Conditions,
               guidance: tuple[float, float, float], temperature: float, seed: int = 0) -> torch.Tensor:
    """Redraw the masked codes of panels (M, h, w) given the kept ones before them, the new captions, the
    style and the character -> (M, h, w); the codes outside ``mask`` are kept exactly."""
    torch.manual_seed(seed)
    style, text, reference = _on(prior, cond, True)
    out = prior.sample(style, text, reference, guidance, temperature,
                       given=to_device(codes, model_device(prior)), resample=to_device(mask, model_device(prior)))
    return out.cpu()

