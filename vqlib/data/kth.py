"""KTH human actions (Schuldt, Laptev and Caputo 2004): the real video of the ``full`` profile.

25 people perform six actions (boxing, hand clapping, hand waving, jogging, running, walking) in
four scenarios (d1 outdoors, d2 outdoors with the camera zooming, d3 outdoors in other clothes, d4
indoors), filmed by a static camera at 25 frames per second in 160 × 120 grey levels: 599 AVI files
(MPEG-4 part 2, "DivX"), one zip per action, about 1.1 GB in all.

- ``kth(split, frames, size, step, stride)``: clips (N, T, 1, S, S) float32 in [0, 1] of the people
  of ``split`` by KTH's own protocol (``SPLIT_PERSONS``: training people 11-18, validation 1, 4,
  19-21 and 23-25, test 2, 3, 5-10 and 22), so no person is in two splits; with each clip's action,
  person, scenario and caption ("a person boxes"). The six zips are downloaded once (checked and
  cached, ``vqlib.core.download``), every video is decoded once with PyAV (a dependency of the book,
  imported only here), every ``step``-th frame kept, resized (short side S) and centre-cropped to
  S × S, and the frames are cached (``vqlib.core.cache.cached_arrays``). Clips of T frames start
  every ``stride`` kept frames of a video. Offline it raises ``DownloadError``: there is no bundled
  stand-in for real video, so only the ``full`` profile uses it.
- ``read_kth_zip(path, size, step)``: the videos of one zip, ``parse_name`` reads a file name,
  ``clip_starts`` says where the clips of each video start.

Checksums: KTH publishes none; ``KTH_FILES`` holds the SHA-1s published with vipy's KTH loader
(github.com/visym/vipy, ``vipy/dataset/kthactions.py``), checked by ``fetch`` like an MD5.

Left out: KTH's ``00sequences.txt`` (where each of the four repetitions in a video starts and ends;
no checksum is published for it), so a clip may span the pause between two repetitions, when a
walker has left the picture; ``person01_boxing_d4`` is reported damaged, and a video that stops
decoding keeps the frames before the damage, with a warning.

Dimension key: N clips, T frames, S frame side, F decoded frames, V videos.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqlib.core.cache import cache_dir, cached_arrays
from vqlib.core.download import fetch
from vqlib.data.photos import center_crop

SPLITS = ("train", "val", "test")
ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
CAPTIONS = {"boxing": "a person boxes", "handclapping": "a person claps", "handwaving": "a person waves",
            "jogging": "a person jogs", "running": "a person runs", "walking": "a person walks"}
SCENARIOS = ("outdoors", "outdoors, zooming", "outdoors, other clothes", "indoors")  # d1..d4
SPLIT_PERSONS = {"train": (11, 12, 13, 14, 15, 16, 17, 18),  # Schuldt et al. 2004, as the KTH page lists them
                 "val": (19, 20, 21, 23, 24, 25, 1, 4),
                 "test": (22, 2, 3, 5, 6, 7, 8, 9, 10)}
KTH_URL = "https://www.csc.kth.se/cvap/actions/"
KTH_FILES = {  # SHA-1 of each zip, as published with vipy's KTH loader (KTH publishes no checksums)
    "boxing.zip": "adb36ed9c29c846d44d2ba15f348bd115c951bbd",
    "handclapping.zip": "d3b81261aa822ef63d0d1523f945bfaff27814d2",
    "handwaving.zip": "0792f7cd69f7f895a205c08ac212ddaa7177e370",
    "jogging.zip": "21943bdbcef9dad106db0d74661e49eaeaa15a25",
    "running.zip": "da83bb313edfd4455fffdda6263696fa10d43c6f",
    "walking.zip": "a3e81537271a0ab4576591774baa38c2d97b7e3a",
}
NAME = re.compile(r"person(\d\d)_([a-z]+)_d([1-4])_uncomp\.avi")
META = ("persons", "actions", "scenarios")  # one integer per video: person 1..25, ACTIONS index, d1..d4 -> 0..3


@dataclass(frozen=True)
class KTH:
    """Clips of KTH videos with what they show (captions, and for splits and tests)."""

    videos: torch.Tensor  # (N, T, 1, S, S) float32 in [0, 1]
    actions: torch.Tensor  # (N,) long: index into ACTIONS
    persons: torch.Tensor  # (N,) long: the person, 1..25
    scenarios: torch.Tensor  # (N,) long: index into SCENARIOS
    captions: tuple[str, ...]  # N captions, "a person boxes"

    def __len__(self) -> int:
        return len(self.videos)


def parse_name(name: str) -> tuple[int, int, int]:
    """``"person01_boxing_d4_uncomp.avi"`` -> (person 1, action 0, scenario 3)."""
    match = NAME.fullmatch(Path(name).name)
    if not match or match[2] not in ACTIONS or not 1 <= int(match[1]) <= 25:
        raise ValueError(f"{name!r} is not a KTH video name like 'person01_boxing_d1_uncomp.avi' "
                         f"(person 01-25, an action of {ACTIONS}, scenario d1-d4)")
    return int(match[1]), ACTIONS.index(match[2]), int(match[3]) - 1


def _import_av():
    try:
        import av
    except ImportError as err:
        raise ModuleNotFoundError("decoding KTH's AVI files needs PyAV, a dependency of the book: run "
                                  "`make install`, or `pip install -c constraints.txt av`") from err
    return av


def decode_avi(data: bytes, name: str, size: int, step: int) -> np.ndarray:
    """Every ``step``-th frame of an AVI file, grey, resized and centre-cropped -> (F, S, S) uint8.

    A video that stops decoding keeps the frames before the damage, with a warning naming it."""
    av = _import_av()
    frames = []
    try:
        with av.open(io.BytesIO(data)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % step == 0:  # the luma plane is the grey level
                    grey = Image.fromarray(frame.to_ndarray(format="gray"))
                    frames.append(center_crop(grey, size)[..., 0])  # (S, S)
    except (av.error.FFmpegError, EOFError) as err:
        warnings.warn(f"{name}: decoding stopped after {len(frames)} kept frames ({err}); "
                      "the rest of this video is left out", stacklevel=2)
    return np.stack(frames) if frames else np.zeros((0, size, size), dtype=np.uint8)


def read_kth_zip(path: str | Path, size: int, step: int) -> dict[str, np.ndarray]:
    """The videos of one KTH zip, sorted by name: ``frames`` (F, S, S) uint8 of all videos one after
    another, ``lengths`` (V,) frames per video, and ``persons``, ``actions``, ``scenarios`` (V,)."""
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith(".avi"))
        if not names:
            raise ValueError(f"{path} holds no AVI files: is it a KTH action zip?")
        videos = [decode_avi(archive.read(n), n, size, step) for n in names]
    meta = np.array([parse_name(n) for n in names], dtype=np.int64).reshape(-1, 3)  # (V, 3)
    return {"frames": np.concatenate(videos), "lengths": np.array([len(v) for v in videos], dtype=np.int64),
            **{key: meta[:, i] for i, key in enumerate(META)}}


def _decoded(size: int, step: int) -> dict[str, np.ndarray]:
    """All six zips, downloaded and decoded once; the frames are cached (decoding takes minutes)."""
    def decode() -> dict[str, np.ndarray]:
        parts = [read_kth_zip(fetch(KTH_URL + name, sha1, folder="kth"), size, step)
                 for name, sha1 in sorted(KTH_FILES.items())]
        return {key: np.concatenate([p[key] for p in parts]) for key in ("frames", "lengths", *META)}

    return cached_arrays(cache_dir() / "data" / f"kth-{size}px-step{step}.npz", decode, "the KTH download")


def clip_starts(lengths: np.ndarray, frames: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the clips of T = ``frames`` frames start, every ``stride`` frames of each video, in
    videos laid one after another: (video index (N,), first frame in the concatenation (N,))."""
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pairs = [(v, offsets[v] + s) for v, n in enumerate(lengths) for s in range(0, n - frames + 1, stride)]
    return tuple(np.array([p[i] for p in pairs], dtype=np.int64) for i in (0, 1))


def kth(split: str = "train", frames: int = 16, size: int = 64, step: int = 2, stride: int | None = None) -> KTH:
    """Clips (N, T, 1, S, S) of the KTH videos of ``split``'s people; see the module docstring.

    ``step``: keep every step-th frame (2: 12.5 frames per second, so a 16-frame clip spans 1.3 s).
    ``stride``: kept frames between the starts of two clips of a video; by default half a clip for
    training (overlapping clips, twice the clips) and a whole clip for validation and test (every
    frame scored once). Raises DownloadError offline.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected 'train', 'val' or 'test'")
    stride = stride or (max(1, frames // 2) if split == "train" else frames)
    if min(frames, step, stride) < 1 or not 4 <= size <= 120:
        raise ValueError(f"kth needs frames, step and stride >= 1 and a size in 4..120 (the videos are "
                         f"160 x 120), got frames={frames}, step={step}, stride={stride}, size={size}")
    data = _decoded(size, step)
    video, start = clip_starts(data["lengths"], frames, stride)  # (N,), (N,): clips of every video
    keep = np.isin(data["persons"][video], SPLIT_PERSONS[split])  # the clips of this split's people
    video, start = video[keep], start[keep]
    if not len(video):
        raise ValueError(f"no KTH video of the {split} split has {frames} frames after keeping every {step}-th")
    clips = data["frames"][start[:, None] + np.arange(frames)]  # (N, T, S, S) uint8
    actions = torch.from_numpy(data["actions"][video])
    return KTH(videos=torch.from_numpy(clips).unsqueeze(2).float() / 255.0,  # (N, T, 1, S, S)
               actions=actions, persons=torch.from_numpy(data["persons"][video]),
               scenarios=torch.from_numpy(data["scenarios"][video]),
               captions=tuple(CAPTIONS[ACTIONS[a]] for a in actions.tolist()))
