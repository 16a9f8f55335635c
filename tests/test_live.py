"""The live figures' graphs: ONNX Runtime computes what PyTorch computes (vqlib.core.onnx), the GPT's
fixed-cache step is the GPT (vqlib.priors.gpt_step), the figures carry their models and a still
(vqlib.book.live), and the runtime is vendored from the npm package (book/_ext/vqlib_live.py).

Tolerance: 1e-4 in absolute value on outputs of order 1 (float32 arithmetic in another order);
the measured errors are about 1e-6. The browser side is tests/browser/test_live.py.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from vqlib.book import live
from vqlib.core.onnx import Method, export_onnx, onnx_error
from vqlib.priors.gpt import GPT, GPTConfig
from vqlib.priors.gpt_step import GPTStep
from vqlib.priors.maskgit import MaskGIT, MaskGITConfig, mask_counts
from vqlib.tokenizers.video import VideoVQVAE, VideoVQVAEConfig
from vqlib.tokenizers.vqvae import VQVAE, VQVAEConfig

pytest.importorskip("onnxscript", reason="pip install -e '.[book]'")
pytest.importorskip("onnxruntime", reason="pip install -e '.[test]'")

TOLERANCE = 1e-4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vqvae():
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig.for_profile("smoke", in_channels=1)).eval()


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16, num_classes=10)).eval()


@pytest.fixture(scope="module")
def maskgit():
    torch.manual_seed(2)
    return MaskGIT(MaskGITConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16, num_classes=10,
                                 class_dropout=0.1)).eval()


def test_decoder_graph_matches_pytorch(vqvae):
    codes = torch.randint(0, vqvae.config.codebook_size, (1, 7, 7))
    graph = export_onnx(Method(vqvae, "decode"), (codes,), ["codes"], ["pixels"])
    other = torch.randint(0, vqvae.config.codebook_size, (1, 7, 7))  # not the traced input
    assert onnx_error(graph, Method(vqvae, "decode"), (other,)) < TOLERANCE


def test_video_decoder_graph_matches_pytorch():
    torch.manual_seed(3)
    model = VideoVQVAE(VideoVQVAEConfig.for_profile("smoke", channels=1)).eval()
    codes = torch.randint(0, model.config.codebook_size, (1, *model.latent_shape))
    graph = export_onnx(Method(model, "decode"), (codes,), ["codes"], ["pixels"])
    assert onnx_error(graph, Method(model, "decode"), (torch.randint_like(codes, model.config.codebook_size),)) \
        < TOLERANCE


def test_gpt_step_is_the_gpt(gpt):
    tokens = torch.randint(0, 32, (16,))
    step = GPTStep(gpt)
    for label in (0, 7):
        want = torch.cat([gpt.next_logits(tokens[None, :0], torch.tensor([label])),
                          gpt(tokens[None, :-1], torch.tensor([label]))[0]])  # (L, K)
        assert (step.all_logits(tokens, label) - want).abs().max() < 1e-5


def test_gpt_step_graph_matches_pytorch_at_any_position(gpt):
    step = GPTStep(gpt)
    graph = export_onnx(step, step.first_inputs(), ["token", "position", "label", "keys", "values"],
                        ["logits", "keys_out", "values_out"])
    assert onnx_error(graph, step, step.first_inputs(3)) < TOLERANCE
    filled = (torch.tensor([5]), torch.tensor(9), torch.tensor([2]), torch.randn(step.cache_shape),
              torch.randn(step.cache_shape))  # a later step, with a cache of other values
    assert onnx_error(graph, step, filled) < TOLERANCE


def test_maskgit_graph_matches_pytorch_with_and_without_a_class(maskgit):
    tokens = torch.randint(0, 33, (1, 16))  # codes and the mask id 32
    graph = export_onnx(maskgit, (tokens, torch.tensor([0])), ["tokens", "label"], ["logits"])
    assert onnx_error(graph, maskgit, (torch.randint(0, 33, (1, 16)), torch.tensor([4]))) < TOLERANCE

    class NoClass(torch.nn.Module):  # label 10, "no class" (the guidance id), is cond=None in PyTorch
        def forward(self, tokens, label):
            return maskgit(tokens)

    assert onnx_error(graph, NoClass(), (torch.randint(0, 33, (1, 16)), torch.tensor([10]))) < TOLERANCE


def test_export_leaves_the_random_stream_and_the_model_alone(vqvae):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    before = {k: v.clone() for k, v in vqvae.state_dict().items()}
    export_onnx(Method(vqvae, "decode"), (torch.zeros(1, 7, 7, dtype=torch.long),), ["codes"], ["pixels"])
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(before[k], v) for k, v in vqvae.state_dict().items())


def test_bad_inputs_say_what_was_expected(vqvae):
    with pytest.raises(ValueError, match="no method 'encode_all'"):
        Method(vqvae, "encode_all")
    with pytest.raises(ValueError, match="2 example inputs for 1 input names"):
        export_onnx(vqvae, (torch.zeros(1), torch.zeros(1)), ["x"], ["y"])
    with pytest.raises(ValueError, match=r"need codes \(h, w\)"):
        live.code_editor(vqvae, torch.zeros(1, 7, 7, dtype=torch.long), torch.ones(32))
    with pytest.raises(ValueError, match="video code grid"):
        live.clip_editor(vqvae, torch.zeros(7, 7, dtype=torch.long))
    # the model's own value checks still hold outside an export
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 32\)"):
        vqvae.decode(torch.full((1, 7, 7), 40))


def _payload(figure) -> dict:
    """The JSON a figure's HTML carries."""
    found = re.search(r'<script type="application/json" class="vq-live-data">(.*?)</script>', figure.data, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


def test_figures_carry_their_models_data_and_a_still(vqvae, gpt, maskgit, monkeypatch):
    monkeypatch.setenv("VQLIB_BUILD", "1")
    codes = torch.randint(0, 32, (7, 7))
    editor = live.code_editor(vqvae, codes, torch.bincount(codes.flatten(), minlength=32), palette_size=8)
    data = _payload(editor)
    assert data["widget"] == "code-editor" and data["codes"] == codes.tolist()
    assert 1 <= len(data["palette"]) <= 8 and len(data["tiles"]) == len(data["palette"])
    assert '<img class="vq-live-still"' in editor.data and live.STILL_NOTE in editor.data and "<noscript>" in editor.data
    decoder = base64.b64decode(data["models"]["decoder"])
    assert onnx_error(decoder, Method(vqvae, "decode"), (codes[None],)) < TOLERANCE

    small = GPT(GPTConfig(vocab_size=32, block_size=49, n_layer=1, n_head=2, n_embd=16, num_classes=10)).eval()
    sampler = _payload(live.digit_sampler(GPTStep(small), vqvae, (7, 7), 0, [str(d) for d in range(10)]))
    assert sampler["cache_shape"] == [1, 1, 2, 50, 8] and set(sampler["models"]) == {"step", "decoder"}

    big = MaskGIT(MaskGITConfig(vocab_size=32, block_size=49, n_layer=1, n_head=2, n_embd=16, num_classes=10)).eval()
    counts = {t: mask_counts(49, t, "cosine") for t in (1, 4)}
    race = _payload(live.maskgit_race(big, GPTStep(small), vqvae, (7, 7), counts, "cosine", 0,
                                      [str(d) for d in range(10)],
                                      lambda label, steps: big.decode(1, torch.tensor([label]), steps=steps)[:, 0]))
    assert race["counts"] == {"1": [0], "4": counts[4]} and race["mask_id"] == 32 and race["schedule"] == "cosine"
    assert set(race["models"]) == {"maskgit", "step", "decoder"}


def test_a_figure_never_closes_its_script_element(vqvae, monkeypatch):
    monkeypatch.setenv("VQLIB_BUILD", "1")
    figure = live._figure("x", {}, {"text": "</script><b>"}, torch.zeros(1, 4, 4), "alt")
    assert figure.data.count("</script>") == 1 and _payload(figure)["text"] == "</script><b>"


def test_jupyter_figures_run_pytorch(vqvae, monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(live, "live_kernel", lambda: True)
    codes = torch.randint(0, 32, (7, 7))
    box = live.code_editor(vqvae, codes, torch.ones(32), palette_size=4)
    (row, col), code, label, image = box.children[0].children, box.children[1], box.children[2], box.children[3]
    row.value, col.value = 2, 3
    before = image.value
    choice = next(c for c in code.options if c != int(codes[2, 3]))
    code.value = choice
    assert f"holds code {choice}" in label.value and image.value != before

    torch.manual_seed(6)
    video = VideoVQVAE(VideoVQVAEConfig.for_profile("smoke", channels=1)).eval()
    grid = torch.randint(0, video.config.codebook_size, video.latent_shape)
    clip = live.clip_editor(video, grid)
    frame, (row, col, code), image = clip.children[0], clip.children[1].children, clip.children[2]
    shown = image.value
    code.value = (code.value + 1) % video.config.codebook_size
    assert image.value != shown


def test_vendored_runtime_is_the_packages_files(tmp_path, monkeypatch):
    """The extension packs the npm tarball's files; here a tarball of the same layout, made locally."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import vqlib_live
    finally:
        sys.path.pop(0)
    files = {"package/dist/ort.wasm.min.js": b"var ort = {};", "package/dist/ort-wasm-simd-threaded.wasm": bytes(range(256)) * 50,
             "package/dist/ort-wasm-simd-threaded.mjs": b"export default 1;"}
    tgz = tmp_path / "ort.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr("vqlib.core.download.fetch", lambda url, checksum, folder: tgz)
    target = tmp_path / "out"
    vqlib_live.vendor_ort(target)
    assert (target / "ort.wasm.min.js").read_bytes() == files["package/dist/ort.wasm.min.js"]
    pack = json.loads((target / "ort-pack.js").read_text().removeprefix("window.VQLIVE_ORT_PACK = ").rstrip(";\n"))
    assert gzip.decompress(base64.b64decode(pack["wasm"])) == files["package/dist/ort-wasm-simd-threaded.wasm"]
    assert pack["loader"] == "export default 1;" and "MIT License" in (target / "LICENSE.txt").read_text()
    assert (target / "VERSION").read_text().strip() == vqlib_live.ORT_WEB


def test_jupyter_race_shows_both_samplers(vqvae, monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(live, "live_kernel", lambda: True)
    small = GPT(GPTConfig(vocab_size=32, block_size=49, n_layer=1, n_head=2, n_embd=16, num_classes=10)).eval()
    big = MaskGIT(MaskGITConfig(vocab_size=32, block_size=49, n_layer=1, n_head=2, n_embd=16, num_classes=10)).eval()
    counts = {t: mask_counts(49, t, "cosine") for t in (1, 4)}
    box = live.maskgit_race(big, GPTStep(small), vqvae, (7, 7), counts, "cosine", 0, [str(d) for d in range(10)],
                            lambda label, steps: big.decode(1, torch.tensor([label]), steps=steps)[:, 0])
    maskgit_strip, gpt_strip = box.children[2], box.children[4]
    assert maskgit_strip.value and gpt_strip.value and maskgit_strip.value != gpt_strip.value
