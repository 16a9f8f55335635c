"""Stories of one handwritten character, made offline from real MNIST digits.

A *story* is a strip of panels. Its character is one real handwritten digit (one MNIST instance: its
writer's shape is its identity). The first sentence introduces it ("a small red seven stands at the
top left"); every later sentence changes one thing ("it jumps to the bottom right", "it grows", "it
shrinks", "it turns blue"; in ``full`` also "it leans left"). Each panel shows the character in the
state the story has reached, drawn in the story's **style**, a real image transformation of the
same drawing:

- ``ink``: coloured ink on cream paper, the drawing as it is;
- ``chalk``: pastel chalk on a dark board, with a seeded grain that breaks the strokes;
- ``watercolour``: a blurred, translucent colour wash on slightly uneven paper;
- ``pixel art`` (``full``): the drawing on a 2×2 pixel grid, thresholded, in flat colour.

What is in it: the vocabularies (``DIGIT_NAMES``, ``POSITIONS``, ``SIZES``, ``COLOURS``, ``STYLES``,
``LEANS``), ``StoryConfig`` (panel side, panels per story, which colours and styles, whether the
character leans; ``for_profile``), ``Plan`` (one story as a first state and a list of actions, with
its states, sentences and the *captions* that say what each panel shows, and ``edited`` to change
one sentence), ``caption`` (the words of one panel's state), ``draw`` (digits -> panels: the
``ink_layer`` (``lean`` the digits if the story turns them, ``place`` the ink in its corner), then
``paint`` it in a colour and a style), ``character_sheet`` (the character's ink in every view of
``sheet_views``: every place, size and pose a sentence can ask for; ``view_index`` finds a panel's),
``digit_box`` (where a panel's drawing lies) and ``make_stories`` (seeded stories of one MNIST split:
train, validation and test stories use disjoint digit instances).

Dimension key: N stories (or panels), P panels per story, S panel side, C = 3 colour channels, V views
of a character sheet.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vqlib.core.pixels import gaussian_blur
from vqlib.core.profile import pick

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "large")
COLOURS = {"red": (0.85, 0.12, 0.10), "green": (0.10, 0.60, 0.20), "blue": (0.12, 0.30, 0.90),
           "yellow": (0.92, 0.72, 0.05)}
STYLES = ("ink", "chalk", "watercolour", "pixel art")
ACTIONS = ("jump", "grow", "shrink", "turn", "lean")  # what a later sentence does ("lean": only with lean=True)
LEANS = ("upright", "leaning left", "leaning right")  # a drawing's pose: rotated by LEAN_DEGREES (counter-clockwise)
LEAN_DEGREES = (0.0, 25.0, -25.0)
LEAN_SENTENCES = ("it stands up straight", "it leans left", "it leans right")
PAPER, BOARD, GRID = (0.96, 0.95, 0.90), (0.13, 0.20, 0.17), (0.80, 0.86, 0.95)  # backgrounds


@dataclass(frozen=True)
class StoryConfig:
    side: int = 24  # S: panel side in pixels
    panels: int = 3  # P: panels per story
    large: int = 16  # side of a large drawing: with side 24, its corners (0 or 8) and the centred sheet's (4)
    # are whole code cells apart for a tokenizer that divides by 4, as are a small drawing's (0 or 12)
    small: int = 12  # side of a small drawing
    stroke: int = 1  # pixels by which a 28x28 digit's strokes are thickened before it is shrunk (0: as written)
    colours: tuple[str, ...] = ("red", "green", "blue")
    styles: tuple[str, ...] = ("ink", "chalk", "watercolour")
    lean: bool = False  # stories may also rotate the character ("it leans left"): the fifth action

    def __post_init__(self) -> None:
        object.__setattr__(self, "colours", tuple(self.colours))
        object.__setattr__(self, "styles", tuple(self.styles))
        if not 2 <= self.panels or not 4 <= self.small < self.large <= self.side or self.stroke < 0:
            raise ValueError(f"need panels >= 2 and 4 <= small < large <= side, got {self}")
        unknown = [c for c in self.colours if c not in COLOURS] + [s for s in self.styles if s not in STYLES]
        if unknown or len(self.colours) < 2 or not self.styles:
            raise ValueError(f"colours must be >= 2 of {list(COLOURS)} and styles some of {list(STYLES)}; "
                             f"unknown: {unknown}")
        if "pixel art" in self.styles and self.side % 2:
            raise ValueError(f"pixel art draws on a 2×2 grid: side must be even, got {self.side}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "StoryConfig":
        """The book's stories for a profile: ``full`` has larger panels, longer stories, more colours and
        styles, and a fifth action (leaning)."""
        sizes = pick(smoke=dict(), quick=dict(),
                     full=dict(side=32, panels=5, large=24, small=16, colours=tuple(COLOURS), styles=STYLES,
                               lean=True),
                     profile=profile)
        return cls(**{**sizes, **overrides})


# ----------------------------------------------------------------------------- one story's plan

@dataclass(frozen=True)
class State:
    position: int  # index into POSITIONS
    size: int  # index into SIZES
    colour: int  # index into the config's colours
    lean: int = 0  # index into LEANS: upright, or rotated by LEAN_DEGREES


def apply_action(state: State, kind: str, value: int) -> State:
    """The state after one action: ("jump", position), ("grow", -1), ("shrink", -1), ("turn", colour) or
    ("lean", pose)."""
    if kind not in ACTIONS:
        raise ValueError(f"unknown action {kind!r}: expected one of {ACTIONS}")
    if kind == "jump":
        return dataclasses.replace(state, position=value)
    if kind == "turn":
        return dataclasses.replace(state, colour=value)
    if kind == "lean":
        return dataclasses.replace(state, lean=value)
    return dataclasses.replace(state, size=int(kind == "grow"))


def sentence(kind: str, value: int, colours: tuple[str, ...]) -> str:
    """The sentence of one action: "it jumps to the top right", "it grows", "it turns blue", "it leans left"."""
    if kind == "jump":
        return f"it jumps to the {POSITIONS[value]}"
    if kind == "turn":
        return f"it turns {colours[value]}"
    if kind == "lean":
        return LEAN_SENTENCES[value]
    return f"it {kind}s"


def caption(digit: int, state: State, colours: tuple[str, ...]) -> str:
    """What a panel shows: "a large blue seven at the top right", "a small red two leaning left at the
    bottom left" (an upright drawing names no pose)."""
    pose = "" if state.lean == 0 else f" {LEANS[state.lean]}"
    size, colour, name = SIZES[state.size], colours[state.colour], DIGIT_NAMES[digit]
    return f"a {size} {colour} {name}{pose} at the {POSITIONS[state.position]}"


@dataclass(frozen=True)
class Plan:
    """One story: its character's digit class, the first panel's state and one action per later panel.

    An action is ``(kind, value)``: ("jump", position), ("grow", -1), ("shrink", -1), ("turn", colour),
    ("lean", pose). An upright character's sentences and captions name no pose.
    """

    digit: int
    first: State
    actions: tuple[tuple[str, int], ...]

    def states(self) -> list[State]:
        """The state of every panel: the first, then each action applied in turn."""
        states = [self.first]
        for kind, value in self.actions:
            states.append(apply_action(states[-1], kind, value))
        return states

    def sentences(self, colours: tuple[str, ...]) -> list[str]:
        """The story as told: "a small red seven stands at the top left", "it grows", ..."""
        f = self.first
        first = f"a {SIZES[f.size]} {colours[f.colour]} {DIGIT_NAMES[self.digit]} stands at the {POSITIONS[f.position]}"
        return [first] + [sentence(kind, value, colours) for kind, value in self.actions]

    def captions(self, colours: tuple[str, ...]) -> list[str]:
        """What each panel shows, the story so far resolved: "a large blue seven at the top right"."""
        return [caption(self.digit, s, colours) for s in self.states()]

    def edited(self, panel: int, value: int) -> "Plan":
        """The story with sentence ``panel`` (>= 1, a jump or a turn) changed to jump to / turn ``value``;
        the later sentences stay as they are."""
        if not 1 <= panel <= len(self.actions):
            raise ValueError(f"panel must be in [1, {len(self.actions)}] (the first sentence introduces the "
                             f"character), got {panel}")
        kind, old = self.actions[panel - 1]
        if kind not in ("jump", "turn"):
            raise ValueError(f"only a jump or a turn can be edited to another value; sentence {panel} is {kind!r}")
        before = self.states()[panel - 1]
        if value == old or value == (before.position if kind == "jump" else before.colour):
            raise ValueError(f"an edit must change the panel: {kind} to {value} is what it shows already")
        actions = list(self.actions)
        actions[panel - 1] = (kind, value)
        return dataclasses.replace(self, actions=tuple(actions))


def random_plan(rng: np.random.Generator, digit: int, config: StoryConfig) -> Plan:
    """A seeded story: a random first state, then random actions that each change the panel."""
    first = State(int(rng.integers(len(POSITIONS))), int(rng.integers(len(SIZES))),
                  int(rng.integers(len(config.colours))))
    actions, state = [], first
    for _ in range(config.panels - 1):
        kinds = ("jump", "size", "turn", "lean") if config.lean else ("jump", "size", "turn")
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "jump":
            action = ("jump", int(rng.choice([p for p in range(len(POSITIONS)) if p != state.position])))
        elif kind == "turn":
            action = ("turn", int(rng.choice([c for c in range(len(config.colours)) if c != state.colour])))
        elif kind == "lean":
            action = ("lean", int(rng.choice([a for a in range(len(LEANS)) if a != state.lean])))
        else:
            action = ("shrink", -1) if state.size == 1 else ("grow", -1)
        actions.append(action)
        state = apply_action(state, *action)
    return Plan(digit, first, tuple(actions))


# ----------------------------------------------------------------------------- drawing

def digit_box(position: int, size: int, config: StoryConfig) -> tuple[int, int, int]:
    """(top, left, side) in pixels of the drawing of a panel at ``position`` and ``size``: in the
    corner the position names, touching the panel's edges (so that, when the side of a panel and of
    each drawing are multiples of the tokenizer's factor, a drawing moves by whole code cells)."""
    side = (config.small, config.large)[size]
    row, col = divmod(position, 2)
    return row * (config.side - side), col * (config.side - side), side


def thicken(digits: torch.Tensor, config: StoryConfig) -> torch.Tensor:
    """The digits' strokes widened by ``config.stroke`` pixels on each side (a grey-level dilation), so
    that they survive being shrunk to a panel: (N, 1, 28, 28) -> same."""
    k = config.stroke
    return F.max_pool2d(digits, 2 * k + 1, stride=1, padding=k) if k else digits


def check_digit_images(digits: torch.Tensor) -> None:
    if not torch.is_tensor(digits) or not digits.is_floating_point():
        got = digits.dtype if torch.is_tensor(digits) else type(digits).__name__
        raise TypeError(f"digits must be float MNIST images (N, 1, 28, 28) in [0, 1], got {got}")
    if digits.dim() != 4 or digits.shape[1:] != (1, 28, 28) or len(digits) == 0:
        raise ValueError(f"digits must have shape (N, 1, 28, 28) with N >= 1, got {tuple(digits.shape)}")


def draw(digits: torch.Tensor, positions: torch.Tensor, sizes: torch.Tensor, colours: torch.Tensor,
         styles: torch.Tensor, config: StoryConfig, seed: int = 0, leans: torch.Tensor | None = None) -> torch.Tensor:
    """Panels of digits (N, 1, 28, 28) at positions, sizes (N,) long, in colours (N, 3) float RGB and
    styles (N,) long (indices into ``config.styles``), upright or in the poses ``leans`` (N,) long
    (indices into LEANS) -> (N, 3, S, S) in [0, 1]. ``seed`` fixes the chalk grain and the paper's texture."""
    check_digit_images(digits)
    n = len(digits)
    leans = torch.zeros(n, dtype=torch.long) if leans is None else leans
    for name, v, k in (("positions", positions, len(POSITIONS)), ("sizes", sizes, len(SIZES)),
                       ("styles", styles, len(config.styles)), ("leans", leans, len(LEANS))):
        if v.shape != (n,) or v.dtype != torch.long or v.min() < 0 or v.max() >= k:
            raise ValueError(f"{name} must be (N,) = ({n},) long in [0, {k}), got {v.dtype} {tuple(v.shape)}")
    return paint(ink_layer(digits, positions, sizes, config, leans), colours, styles, config, seed)


def ink_layer(digits: torch.Tensor, positions: torch.Tensor, sizes: torch.Tensor, config: StoryConfig,
              leans: torch.Tensor | None = None) -> torch.Tensor:
    """The ink of digits (N, 1, 28, 28) at positions, sizes and poses (N,) long, before it is painted:
    how much ink covers each pixel, (N, 1, S, S) in [0, 1] (a comic's inked line art before colouring)."""
    if leans is not None and leans.any():
        digits = lean(digits, leans)
    ink = digits.new_zeros(len(digits), 1, config.side, config.side)  # (N, 1, S, S)
    for size in range(len(SIZES)):
        for position in range(len(POSITIONS)):
            rows = (sizes == size) & (positions == position)
            if rows.any():
                ink[rows] = place(digits[rows], *digit_box(position, size, config), config)
    return ink


def lean(digits: torch.Tensor, leans: torch.Tensor) -> torch.Tensor:
    """Digits (N, 1, 28, 28) rotated about the image centre by LEAN_DEGREES[leans] ((N,) long),
    counter-clockwise as seen, so that "leaning left" tips the top of the drawing to the left."""
    angles = torch.tensor(LEAN_DEGREES, dtype=digits.dtype)[leans.cpu()].to(digits.device) * (math.pi / 180)
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(digits.shape), align_corners=False)  # output pixel -> where to read
    return F.grid_sample(digits, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def place(digits: torch.Tensor, top: int, left: int, side: int, config: StoryConfig) -> torch.Tensor:
    """The ink of digits (N, 1, 28, 28) thickened, resized to ``side`` and put at (top, left) of an
    empty panel -> (N, 1, S, S)."""
    ink = digits.new_zeros(len(digits), 1, config.side, config.side)
    ink[:, :, top:top + side, left:left + side] = F.interpolate(
        thicken(digits, config), size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return ink


def paint(ink: torch.Tensor, colours: torch.Tensor, styles: torch.Tensor, config: StoryConfig,
          seed: int = 0) -> torch.Tensor:
    """Ink maps (N, 1, S, S) drawn in colours (N, 3) and styles (N,) -> panels (N, 3, S, S) in [0, 1]."""
    n, s = len(ink), config.side
    if colours.shape != (n, 3):
        raise ValueError(f"colours must be RGB rows (N, 3) = ({n}, 3), got {tuple(colours.shape)}")
    g = torch.Generator().manual_seed(seed)
    grain = torch.rand(n, 1, s, s, generator=g).to(ink)  # (N, 1, S, S) uniform
    colour = colours.to(ink)[:, :, None, None]  # (N, 3, 1, 1)
    paper = torch.tensor(PAPER).to(ink)[None, :, None, None]
    out = ink.new_empty(n, 3, s, s)
    for k, style in enumerate(config.styles):
        rows = styles == k
        if not rows.any():
            continue
        m, c = ink[rows], colour[rows]
        if style == "ink":
            out[rows] = paper * (1 - m) + c * m
        elif style == "chalk":  # pastel chalk whose grain leaves gaps in the strokes
            m = m * (0.45 + 0.55 * grain[rows])
            out[rows] = torch.tensor(BOARD).to(ink)[None, :, None, None] * (1 - m) + (0.6 * c + 0.4) * m
        elif style == "watercolour":  # a translucent wash that bleeds past the strokes, on uneven paper
            wash = 0.8 * (1.6 * gaussian_blur(m, 1.0)).clamp(0, 1)
            uneven = paper * (0.94 + 0.06 * gaussian_blur(grain[rows], 1.5))
            out[rows] = uneven * (1 - wash) + (0.8 * c + 0.2) * wash
        else:  # pixel art: the drawing on a 2x2 grid, thresholded, in flat colour
            cells = (F.avg_pool2d(m, 2) > 0.3).to(m)
            m = cells.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
            out[rows] = torch.tensor(GRID).to(ink)[None, :, None, None] * (1 - m) + c * m
    return out.clamp(0, 1)


def colour_table(config: StoryConfig) -> torch.Tensor:
    """The RGB rows of the config's colours: (number of colours, 3)."""
    return torch.tensor([COLOURS[c] for c in config.colours])


def sheet_views(config: StoryConfig) -> list[State]:
    """The views of a character sheet: every place, size (and, with ``config.lean``, pose) a sentence
    can ask for, as States of colour 0 (a sheet is ink, uncoloured)."""
    leans = range(len(LEANS)) if config.lean else range(1)
    return [State(position, size, 0, pose) for pose in leans for size in range(len(SIZES))
            for position in range(len(POSITIONS))]


def view_index(state: State, config: StoryConfig) -> int:
    """Which view of ``sheet_views(config)`` shows a panel of ``state`` (its colour aside)."""
    if state.lean and not config.lean:
        raise ValueError(f"a leaning state {state} has no view in a sheet of upright drawings (config.lean=False)")
    return sheet_views(config).index(dataclasses.replace(state, colour=0))


def character_sheet(digits: torch.Tensor, config: StoryConfig) -> torch.Tensor:
    """The characters' model sheets: each digit's ink in every view of ``sheet_views`` (every place,
    size and pose a sentence can name), uncoloured, as an animator's model sheet shows a character in
    its standard poses. (N, 1, 28, 28) -> (N, V, 1, S, S)."""
    check_digit_images(digits)
    views = sheet_views(config)
    n = len(digits)
    return torch.stack([ink_layer(digits, torch.full((n,), v.position), torch.full((n,), v.size), config,
                                  torch.full((n,), v.lean)) for v in views], dim=1)


# ----------------------------------------------------------------------------- stories of a split

@dataclass(frozen=True)
class Stories:
    """N stories of P panels, all tensors on the CPU."""

    config: StoryConfig
    plans: tuple[Plan, ...]  # N plans
    instances: torch.Tensor  # (N,) long: which digit of the split is each story's character
    digits: torch.Tensor  # (N,) long: its class
    styles: torch.Tensor  # (N,) long: index into config.styles
    positions: torch.Tensor  # (N, P) long
    sizes: torch.Tensor  # (N, P) long
    colours: torch.Tensor  # (N, P) long: index into config.colours
    leans: torch.Tensor  # (N, P) long: index into LEANS (all 0, upright, unless config.lean)
    panels: torch.Tensor  # (N, P, 3, S, S) float in [0, 1]
    inks: torch.Tensor  # (N, P, 1, S, S) float in [0, 1]: each panel's ink layer, before it is painted
    sheets: torch.Tensor  # (N, V, 1, S, S): each character's model sheet (``character_sheet``)

    def __len__(self) -> int:
        return len(self.plans)

    def sentences(self, i: int) -> list[str]:
        return self.plans[i].sentences(self.config.colours)

    def captions(self, i: int) -> list[str]:
        return self.plans[i].captions(self.config.colours)

    def all_captions(self) -> list[str]:
        """The captions of every panel, story after story: N·P strings."""
        return [c for i in range(len(self)) for c in self.captions(i)]


def render(plans: tuple[Plan, ...], images: torch.Tensor, styles: torch.Tensor, config: StoryConfig,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw every panel of ``plans`` with the characters ``images`` (N, 1, 28, 28) and ``styles`` (N,)
    -> panels (N, P, 3, S, S), their ink layers (N, P, 1, S, S) and the states: positions, sizes,
    colours, leans (N, P) long."""
    if len(plans) != len(images) or styles.shape != (len(plans),):
        raise ValueError(f"need one image and one style per plan: {len(plans)} plans, {len(images)} images, "
                         f"styles {tuple(styles.shape)}")
    check_digit_images(images)
    states = [p.states() for p in plans]
    positions, sizes, colours, leans = (torch.tensor([[getattr(s, a) for s in row] for row in states])
                                        for a in ("position", "size", "colour", "lean"))  # (N, P) each
    n, p = positions.shape
    ink = ink_layer(images.repeat_interleave(p, 0), positions.flatten(), sizes.flatten(), config, leans.flatten())
    flat = paint(ink, colour_table(config)[colours.flatten()], styles.repeat_interleave(p), config, seed)
    side = config.side
    return flat.view(n, p, 3, side, side), ink.view(n, p, 1, side, side), positions, sizes, colours, leans


def make_stories(images: torch.Tensor, labels: torch.Tensor, n: int, config: StoryConfig,
                 seed: int = 0) -> Stories:
    """``n`` seeded stories whose characters are digits of one split, ``images`` (M, 1, 28, 28) with
    ``labels`` (M,): each story draws its own instance while there are enough (then instances repeat,
    each with a new story). Stories of the train, validation and test splits share no instance."""
    check_digit_images(images)
    if labels.shape != (len(images),) or n < 1:
        raise ValueError(f"need labels (M,) = ({len(images)},) and n >= 1, got {tuple(labels.shape)} and n={n}")
    rng = np.random.default_rng(seed)
    m = len(images)
    instances = np.concatenate([rng.permutation(m) for _ in range(-(-n // m))])[:n]
    instances = torch.from_numpy(instances).long()  # (N,)
    digits = labels[instances]
    styles = torch.from_numpy(rng.integers(len(config.styles), size=n)).long()  # (N,)
    plans = tuple(random_plan(rng, int(d), config) for d in digits)
    panels, inks, positions, sizes, colours, leans = render(plans, images[instances], styles, config, seed)
    return Stories(config, plans, instances, digits, styles, positions, sizes, colours, leans, panels, inks,
                   character_sheet(images[instances], config))
