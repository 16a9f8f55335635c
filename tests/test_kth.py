"""KTH actions, offline: tiny AVI files in KTH's format (MPEG-4 part 2 "DX50" in AVI, 160 x 120 grey,
25 fps), zipped one zip per action like the real archives, served from file:// URLs through the checked
download. Every frame is one flat grey level that encodes its video and its frame number, so a clip can
be traced back to where it was cut."""

import hashlib
import io
import sys
import zipfile

import numpy as np
import pytest
import torch

from vqlib.core.download import DownloadError
from vqlib.data import kth as data

PEOPLE = {"train": 11, "val": 19, "test": 22}  # one person of each split
FRAMES = 12  # frames per test video


def level(video: int, t: int) -> int:
    """The grey level of frame t of test video ``video`` (t < 32): the video sets the base, time adds 3 a frame."""
    return 20 + 40 * video + 3 * t


def write_avi(levels: list[int]) -> bytes:
    """An AVI of flat grey frames in KTH's format."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.codec_context.codec_tag = "DX50"  # DivX 5, as in the KTH files
        stream.codec_context.qmin, stream.codec_context.qmax = 1, 2  # fine quantiser: levels survive within ±2
        for value in levels:
            frame = av.VideoFrame.from_ndarray(np.full((120, 160), value, dtype=np.uint8), format="gray")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


def serve(server, monkeypatch, frames=FRAMES, everyone=("boxing", "walking")):
    """Six action zips in ``server``: the actions of ``everyone`` (default boxing and walking) hold a video of
    one person of each split (video ids 0-2 and 3-5), the other zips one test video each; ``data`` fetches
    them from there."""
    server.mkdir()
    checksums, video = {}, 0
    for action in data.ACTIONS:
        people = PEOPLE.values() if action in everyone else [PEOPLE["test"]]
        with zipfile.ZipFile(server / f"{action}.zip", "w") as archive:
            for person in people:
                levels = [level(video % 4, t) for t in range(frames)]
                archive.writestr(f"person{person:02d}_{action}_d{video % 4 + 1}_uncomp.avi", write_avi(levels))
                video += 1
        checksums[f"{action}.zip"] = hashlib.sha1((server / f"{action}.zip").read_bytes()).hexdigest()
    monkeypatch.setattr(data, "KTH_URL", server.as_uri() + "/")
    monkeypatch.setattr(data, "KTH_FILES", checksums)
    return server


@pytest.fixture
def kth_mirror(tmp_path, monkeypatch):
    """A private cache and a 'server' of tiny KTH zips (``serve``)."""
    monkeypatch.setenv("VQLIB_CACHE", str(tmp_path / "cache"))
    return serve(tmp_path / "server", monkeypatch)


def test_parse_name():
    assert data.parse_name("boxing/person01_boxing_d4_uncomp.avi") == (1, 0, 3)
    assert data.parse_name("person25_walking_d1_uncomp.avi") == (25, 5, 0)
    for bad in ("person26_boxing_d1_uncomp.avi", "person01_dancing_d1_uncomp.avi", "person01_boxing_d5_uncomp.avi",
                "readme.txt"):
        with pytest.raises(ValueError, match="not a KTH video name"):
            data.parse_name(bad)


def test_splits_are_kths_protocol():
    people = [p for split in data.SPLITS for p in data.SPLIT_PERSONS[split]]
    assert sorted(people) == list(range(1, 26))  # every person once
    assert len(data.SPLIT_PERSONS["train"]) == 8 and len(data.SPLIT_PERSONS["test"]) == 9


def test_clip_starts_against_a_loop():
    lengths = np.array([10, 3, 7])
    video, start = data.clip_starts(lengths, frames=4, stride=3)
    expected = [(0, 0), (0, 3), (0, 6), (2, 13), (2, 16)]  # video 1 is too short; video 2 starts at 13
    assert list(zip(video.tolist(), start.tolist())) == expected


def test_decoded_frames_keep_every_step_th_frame_resized_and_cropped():
    levels = [level(1, t) for t in range(FRAMES)]
    frames = data.decode_avi(write_avi(levels), "x.avi", size=16, step=3)
    assert frames.shape == (4, 16, 16) and frames.dtype == np.uint8
    np.testing.assert_allclose(frames.mean(axis=(1, 2)), levels[::3], atol=2)  # MPEG-4 is lossy, a little


def test_clips_shapes_ranges_splits_and_captions(kth_mirror):
    for split, person in PEOPLE.items():
        clips = data.kth(split, frames=3, size=16, step=2)
        n_videos = 2 if split != "test" else 6
        per_video = {"train": 4, "val": 2, "test": 2}[split]  # 6 kept frames: starts 0-3 (train) or 0, 3
        assert clips.videos.shape == (n_videos * per_video, 3, 1, 16, 16)
        assert clips.videos.dtype == torch.float32 and 0 <= clips.videos.min() and clips.videos.max() <= 1
        assert set(clips.persons.tolist()) == {person}  # nobody in two splits
        assert len(clips) == len(clips.actions) == len(clips.scenarios) == len(clips.captions)
        assert all(c == data.CAPTIONS[data.ACTIONS[a]] for c, a in zip(clips.captions, clips.actions.tolist()))
        # each clip holds consecutive kept frames of its own video: the grey levels say which and where
        means = clips.videos.mean(dim=(2, 3, 4)) * 255  # (N, T)
        for row, scenario in zip(means, clips.scenarios.tolist()):
            first = round((row[0].item() - level(scenario, 0)) / 3)
            np.testing.assert_allclose(row.numpy(), [level(scenario, first + 2 * k) for k in range(3)], atol=2)
    assert sorted(set(data.kth("test", frames=3, size=16).captions)) == sorted(data.CAPTIONS.values())


def test_stride_and_cache(kth_mirror):
    train = data.kth("train", frames=2, size=16, step=1, stride=5)  # 12 frames: starts 0, 5, 10
    assert len(train) == 2 * 3
    for f in kth_mirror.iterdir():
        f.unlink()  # the server is gone: the cache answers
    torch.testing.assert_close(data.kth("train", frames=2, size=16, step=1, stride=5).videos, train.videos)


def test_full_size_clips_fit_chapter_8s_full_tokenizer(tmp_path, monkeypatch):
    from vqlib.recipes.ch08_video_tokenizers import CLIP_SIZES, equal_bits_configs
    from vqlib.tokenizers.video import VideoVQVAE

    full = CLIP_SIZES["full"]
    monkeypatch.setenv("VQLIB_CACHE", str(tmp_path / "cache"))
    serve(tmp_path / "server", monkeypatch, frames=2 * full["frames"])  # one clip per video at step 2
    clips = data.kth("train", frames=full["frames"], size=full["size"])
    assert clips.videos.shape == (2, full["frames"], 1, full["size"], full["size"])
    VideoVQVAE(equal_bits_configs("full")["3d"]).check_input(clips.videos)


def test_checksum_mismatch_is_a_download_error(kth_mirror, monkeypatch):
    monkeypatch.setitem(data.KTH_FILES, "boxing.zip", "0" * 40)
    with pytest.raises(DownloadError, match=r"boxing\.zip arrived corrupt or changed: sha1"):
        data.kth("train", frames=3, size=16)


def test_a_damaged_video_is_cut_short_with_a_warning():
    good = write_avi([level(0, t) for t in range(FRAMES)])
    with pytest.warns(UserWarning, match="person19_boxing_d4_uncomp.avi: decoding stopped"):
        frames = data.decode_avi(good[:200], "person19_boxing_d4_uncomp.avi", size=16, step=1)
    assert frames.shape[1:] == (16, 16) and len(frames) < FRAMES


def test_bad_arguments_and_foreign_zips(kth_mirror, tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        data.kth("dev")
    with pytest.raises(ValueError, match="size in 4..120"):
        data.kth("train", size=200)
    with pytest.raises(ValueError, match="no KTH video of the val split has 20 frames"):
        data.kth("val", frames=20, size=16)
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:
        archive.writestr("cat.jpg", b"not a video")
    with pytest.raises(ValueError, match="holds no AVI files"):
        data.read_kth_zip(tmp_path / "photos.zip", size=16, step=1)


def test_without_pyav_the_error_says_what_to_install(kth_mirror, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails as if it were not installed
    with pytest.raises(ModuleNotFoundError, match="needs PyAV.*make install"):
        data.kth("train", frames=3, size=16)


def test_the_real_video_recipes_train_on_kth_clips(kth_mirror):
    from vqlib.recipes.ch09_video_generation import train_kth_video_prior

    prior, history = train_kth_video_prior(profile="smoke", progress=False)
    assert history.steps == 10 and all(np.isfinite(history.series("loss")[1]))
    assert set(prior.config.words[1:]) == {"a", "person", "boxes", "walks"}  # person 11 boxes and walks


def test_the_full_dry_run_covers_the_real_video_models():
    """The full dry run (tests/test_full_dry_run.py) builds the KTH models at full size: chapter 8's KTH
    tokenizer is its "moving-mnist-video-vqvae" model, and "kth-prior-tokenizer" and "kth-video-prior" are
    chapter 9's KTH tokenizer and captioned prior with the recipes' own configs and budgets."""
    from pathlib import Path

    from vqlib.recipes.ch08_video_tokenizers import equal_bits_configs, video_train_config
    from vqlib.recipes.ch09_video_generation import KTH_TOKENIZER, video_prior_train_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import full_recipes

    assert full_recipes.RECIPES["moving-mnist-video-vqvae"]().model.config == equal_bits_configs("full")["3d"]
    tokenizer = full_recipes.RECIPES["kth-prior-tokenizer"]()
    assert tokenizer.model.config == equal_bits_configs("full", **KTH_TOKENIZER)["3d"]
    assert tokenizer.train_config == video_train_config("full")
    prior = full_recipes.RECIPES["kth-video-prior"]()
    assert prior.model.config.latent_shape == tokenizer.model.latent_shape
    assert prior.train_config == video_prior_train_config("full")


def test_one_clip_per_action_is_the_middle_clip_of_each(kth_mirror):
    from vqlib.recipes.ch08_video_tokenizers import one_clip_per_action

    test = data.kth("test", frames=3, size=16, stride=1)  # 6 kept frames: 4 clips per video, one video per action
    picked = one_clip_per_action(test)
    assert picked.tolist() == [4 * a + 2 for a in range(len(data.ACTIONS))]  # videos sorted by action
    assert test.actions[picked].tolist() == list(range(len(data.ACTIONS)))
    with pytest.raises(ValueError, match="no 'handclapping' clip"):
        one_clip_per_action(data.kth("train", frames=3, size=16))  # person 11 only boxes and walks


def test_psnr_per_clip_against_whole_reconstructions():
    from vqlib.recipes.ch08_video_tokenizers import (equal_bits_configs, psnr_per_clip, psnr_per_frame,
                                                     reconstruct_with_indices)
    from vqlib.tokenizers.video import VideoVQVAE

    torch.manual_seed(0)
    model = VideoVQVAE(equal_bits_configs("smoke")["3d"]).train()
    videos = torch.rand(5, 4, 1, 16, 16)
    x_hat, _ = reconstruct_with_indices(model, videos)
    expected = psnr_per_frame(videos, x_hat).mean(1)  # (5,)
    torch.testing.assert_close(psnr_per_clip(model, videos, batch_size=2), expected)
    assert model.training  # the mode is restored


def test_chapter_8s_kth_section_runs_offline(kth_mirror):
    from vqlib.recipes.ch08_video_tokenizers import evaluate_kth_tokenizer

    results = evaluate_kth_tokenizer(profile="smoke", progress=False)
    n_test = len(data.kth("test", frames=4, size=16))
    assert results.psnr.shape == (n_test,) and torch.isfinite(results.psnr).all() and results.steps == 4
    assert results.videos.shape == results.x_hat.shape == (len(data.ACTIONS), 4, 1, 16, 16)
    assert 0 <= results.x_hat.min() and results.x_hat.max() <= 1


def test_caption_bits_against_whole_clips():
    from vqlib.priors.text import CaptionTokenizer
    from vqlib.priors.video_prior import VideoPrior, VideoPriorConfig
    from vqlib.recipes.ch09_video_generation import caption_bits

    torch.manual_seed(0)
    captions = ["a person boxes", "a person walks", "a person boxes"]
    prior = VideoPrior(VideoPriorConfig.for_profile(8, (1, 2, 2), CaptionTokenizer.fit(captions), profile="smoke"))
    codes = torch.randint(0, 8, (3, 1, 2, 2))
    bits, bits_empty = caption_bits(prior, codes, captions, batch_size=2)
    with torch.no_grad():
        text = prior.caption_tokens(captions, 3)
        torch.testing.assert_close(bits, prior.nll(codes, text) / np.log(2))
        torch.testing.assert_close(bits_empty, prior.nll(codes) / np.log(2))
    assert not torch.equal(bits, bits_empty)  # the caption changes the prediction
    with pytest.raises(ValueError, match="2 captions for 3 grids"):
        caption_bits(prior, codes, captions[:2])


def test_chapter_9s_kth_section_runs_offline(tmp_path, monkeypatch):
    from vqlib.recipes.ch09_video_generation import evaluate_kth_video_prior

    monkeypatch.setenv("VQLIB_CACHE", str(tmp_path / "cache"))
    serve(tmp_path / "server", monkeypatch, everyone=data.ACTIONS)  # every caption is a training caption
    results = evaluate_kth_video_prior(profile="smoke", progress=False)
    n_test = len(data.kth("test", frames=4, size=16))
    assert results.bits.shape == results.bits_empty.shape == (n_test,) and results.steps == 10
    assert torch.isfinite(results.bits).all() and torch.isfinite(results.bits_empty).all()
    assert results.captions == tuple(data.CAPTIONS[a] for a in data.ACTIONS)
    assert results.samples.shape == (len(data.ACTIONS), 4, 1, 16, 16)
    assert 0 <= results.samples.min() and results.samples.max() <= 1
    assert results.tokens == 2 * 2 * 2  # (T/2, S/8, S/8) codes of 4 frames of 16 x 16
