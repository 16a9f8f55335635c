import pytest
import torch

from vqlib.data.photos import num_labels, photos
from vqlib.judges.photonet import PhotoNet, PhotoNetConfig, hits, photo_net_loss, train_photo_net
from vqlib.losses.perceptual import VGG16_TAPS, PerceptualLoss, VGG16Features, lpips_vgg, normalize_channels


def tiny_net() -> PhotoNet:
    torch.manual_seed(0)
    return PhotoNet(PhotoNetConfig(widths=(4, 8)))


def test_distance_matches_the_lpips_formula_by_hand():
    net = tiny_net()
    x, y = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    expected = torch.zeros(3)
    for a, b in zip(net.taps(x), net.taps(y)):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        expected += (a - b).pow(2).sum(1).mean(dim=(1, 2))
    torch.testing.assert_close(PerceptualLoss(net)(x, y), expected)
    weights = [torch.rand(4), torch.rand(8)]
    weighted = torch.zeros(3)
    for w, a, b in zip(weights, net.taps(x), net.taps(y)):
        weighted += ((normalize_channels(a) - normalize_channels(b)).pow(2) * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    torch.testing.assert_close(PerceptualLoss(net, weights)(x, y), weighted)


def test_distance_is_zero_for_equal_images_and_positive_otherwise():
    loss = PerceptualLoss(tiny_net())
    x = torch.rand(2, 3, 16, 16)
    assert torch.all(loss(x, x) == 0)
    assert torch.all(loss(x, x.flip(-1)) > 0)


def test_network_is_frozen_but_gradient_reaches_the_image():
    net = tiny_net()
    loss = PerceptualLoss(net).train()
    assert not net.training  # train() on the loss keeps the judge in eval mode
    x_hat = torch.rand(2, 3, 16, 16, requires_grad=True)
    loss(torch.rand(2, 3, 16, 16), x_hat).sum().backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())


def test_bad_inputs():
    loss = PerceptualLoss(tiny_net())
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        loss(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    with pytest.raises(TypeError, match="taps"):
        PerceptualLoss(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="2 tapped layers"):
        PerceptualLoss(tiny_net(), [torch.ones(4)])(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))


def test_lpips_vgg_loads_weight_files_offline(tmp_path):
    """A fake pair of weight files in the published formats (random values, right names and shapes)."""
    torch.manual_seed(0)
    vgg = VGG16Features()
    state = {k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's file has a classifier too: ignored
    torch.save(state, tmp_path / "vgg16.pth")
    widths = [64, 128, 256, 512, 512]
    lin = {f"lin{l}.model.1.weight": torch.rand(1, c, 1, 1) for l, c in enumerate(widths)}
    torch.save(lin, tmp_path / "vgg.pth")
    loss = lpips_vgg(tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    d = loss(x, y)
    assert d.shape == (2,) and torch.all(d > 0)
    torch.testing.assert_close(loss.net.features[0].weight, state["features.0.weight"])
    taps = loss.net.taps(x)
    assert [t.shape[1] for t in taps] == widths and len(taps) == len(VGG16_TAPS)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        lpips_vgg(tmp_path / "missing.pth", tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match="not an LPIPS weight file"):
        lpips_vgg(tmp_path / "vgg16.pth", tmp_path / "vgg16.pth")


# ----------------------------------------------------------------------------- the photo networks

def test_config_takes_its_classes_from_the_data():
    assert PhotoNetConfig.for_profile("quick").num_classes == num_labels("quick")
    assert PhotoNetConfig.for_profile("full").num_classes == num_labels("full") == 102
    with pytest.raises(ValueError, match="num_classes"):
        PhotoNetConfig(num_classes=1)


def test_photo_net_shapes_and_overfit():
    net = tiny_net()
    x = torch.rand(4, 3, 16, 16)
    assert [t.shape for t in net.taps(x)] == [(4, 4, 16, 16), (4, 8, 8, 8)]
    assert net.embed(x).shape == (4, 8) and net(x).shape == (4, 13)
    torch.manual_seed(0)
    net = PhotoNet(PhotoNetConfig(widths=(8, 16)))
    x, labels = photos("train", 16, "smoke", labelled=True).tensors
    batch = x[:13], labels[:13]  # one crop of each image
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = photo_net_loss(net, batch)["loss"].item()
    for _ in range(200):
        loss = photo_net_loss(net, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10
    assert hits(net, *batch).mean() > 0.9 and hits(net, *batch).shape == (13,)


def test_train_photo_net_trains_on_the_labelled_crops_and_scores_the_validation_crops():
    net, history = train_photo_net(16, profile="smoke")
    assert net.config.num_classes == num_labels("smoke") and history.steps == 10
    x, labels = photos("val", 16, "smoke", labelled=True).tensors
    assert history.last("accuracy") == pytest.approx(float(hits(net, x, labels).mean()))
