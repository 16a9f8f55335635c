import pytest
import torch

from vqlib.data.photos import TRAIN_PHOTOS
from vqlib.judges.photonet import PhotoNet, PhotoNetConfig, labelled_crops, photo_net_loss, task_batch
from vqlib.losses.perceptual import VGG16_TAPS, PerceptualLoss, VGG16Features, lpips_vgg, normalize_channels


def tiny_net(task: str = "photo") -> PhotoNet:
    torch.manual_seed(0)
    return PhotoNet(PhotoNetConfig(task=task, widths=(4, 8)))


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

def test_labelled_crops_label_each_photograph():
    data = labelled_crops(3, 16)
    x, labels = data.tensors
    assert x.shape == (3 * len(TRAIN_PHOTOS), 3, 16, 16) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(labels.bincount(), torch.full((len(TRAIN_PHOTOS),), 3))
    assert not torch.equal(x, labelled_crops(3, 16, seed=1).tensors[0])


def test_rotation_task_rotates_every_crop_four_ways():
    x = torch.rand(2, 3, 8, 8)
    inputs, targets = task_batch("rotation", x, torch.zeros(2, dtype=torch.long))
    assert inputs.shape == (8, 3, 8, 8) and targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    torch.testing.assert_close(inputs[2], torch.rot90(x[0], 1, dims=(1, 2)))


def test_photo_net_shapes_and_overfit():
    net = tiny_net("rotation")
    x = torch.rand(4, 3, 16, 16)
    assert [t.shape for t in net.taps(x)] == [(4, 4, 16, 16), (4, 8, 8, 8)]
    assert net.embed(x).shape == (4, 8) and net(x).shape == (4, 4)
    torch.manual_seed(0)
    net = PhotoNet(PhotoNetConfig(task="photo", widths=(8, 16)))
    batch = labelled_crops(2, 16).tensors
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = photo_net_loss(net, batch)["loss"].item()
    for _ in range(100):
        loss = photo_net_loss(net, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10
    with pytest.raises(ValueError, match="task"):
        PhotoNetConfig(task="jigsaw")
