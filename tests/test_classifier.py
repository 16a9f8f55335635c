"""The MNIST classifier that judges generated digits: shapes, learning, the cached recipe, bad input."""

import pytest
import torch

from vqlib.core.metrics import frechet_distance
from vqlib.judges.classifier import (Classifier, ClassifierConfig, accuracy, classifier_loss, features,
                                     frechet_interval, hits, train_mnist_classifier)


def test_shapes_and_features():
    model = Classifier(ClassifierConfig(channels=(4, 8), feature_dim=16)).eval()
    x = torch.rand(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    feats = features(model, x, batch_size=2)
    assert feats.shape == (5, 16) and (feats >= 0).all()  # after a ReLU
    torch.testing.assert_close(feats, model.features(x))


def test_overfits_one_batch_and_accuracy_counts_right():
    model = Classifier(ClassifierConfig(channels=(4, 8), feature_dim=16, dropout=0.0))
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = classifier_loss(model, (x, y))["loss"].item()
    for _ in range(100):
        loss = classifier_loss(model, (x, y))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert classifier_loss(model, (x, y))["loss"].item() < before / 10
    assert accuracy(model, x, y, batch_size=5) == 1.0
    assert accuracy(model, x, (y + 1) % 10) == 0.0
    assert model.training  # accuracy evaluates in eval mode and restores the mode


def test_recipe_learns_digits_and_loads_from_the_cache():
    model, history = train_mnist_classifier(profile="smoke", progress=False)
    assert history.last("accuracy") > 0.5  # 20 steps: far above chance (0.1)
    again, history2 = train_mnist_classifier(profile="smoke", progress=False)
    assert history2.seconds == history.seconds  # loaded, not retrained
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(again(x), model(x))


def test_seeded_recipe_is_another_reproducible_judge(tmp_path, monkeypatch):
    monkeypatch.setenv("VQLIB_CACHE", str(tmp_path / "elsewhere"))
    torch.manual_seed(456)  # the global random state must not matter to a seeded classifier
    one_again, _ = train_mnist_classifier(profile="smoke", progress=False, seed=1)  # trained, not loaded
    monkeypatch.setenv("VQLIB_CACHE", str(tmp_path))
    torch.manual_seed(123)
    one, _ = train_mnist_classifier(profile="smoke", progress=False, seed=1)
    two, _ = train_mnist_classifier(profile="smoke", progress=False, seed=2)
    book, _ = train_mnist_classifier(profile="smoke", progress=False)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(one_again(x), one(x))
    assert not torch.allclose(two(x), one(x)) and not torch.allclose(book(x), one(x))
    assert sorted(p.name.split("-smoke")[0] for p in (tmp_path / "checkpoints").glob("*.pt")) == \
        ["mnist-classifier", "mnist-classifier-seeded", "mnist-classifier-seeded"]


def test_bad_input():
    model = Classifier(ClassifierConfig(channels=(4, 8), feature_dim=16))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.rand(2, 28, 28))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="one label per image"):
        accuracy(model, torch.rand(4, 1, 28, 28), torch.zeros(3, dtype=torch.long))


def test_hits_are_per_image_and_average_to_the_accuracy():
    model = Classifier(ClassifierConfig(channels=(4, 8), feature_dim=16)).eval()
    x = torch.rand(9, 1, 28, 28)
    predicted = model(x).argmax(1)
    y = torch.where(torch.arange(9) < 4, predicted, (predicted + 1) % 10)  # the first 4 right, the rest wrong
    assert hits(model, x, y, batch_size=4).tolist() == [1.0] * 4 + [0.0] * 5
    assert accuracy(model, x, y) == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="one label per image"):
        hits(model, x, y[:3])


def test_frechet_interval_holds_the_distance_and_tells_near_from_far_samples():
    torch.manual_seed(0)
    real = torch.randn(400, 3)
    near, far = torch.randn(300, 3) + 0.1, torch.randn(300, 3) + 1.5
    single = frechet_interval(far, real, n_boot=100)
    assert single.estimate == pytest.approx(frechet_distance(far, real))
    assert single.low < single.high
    diff = frechet_interval(far, real, near, n_boot=100)
    assert diff.estimate == pytest.approx(frechet_distance(far, real) - frechet_distance(near, real))
    assert diff.sign == 1 and (-diff).sign == -1
    same = frechet_interval(torch.randn(300, 3) + 0.1, real, near, n_boot=100)
    assert same.sign == 0  # two draws from one distribution: no clear difference
    assert frechet_interval(far, real, near, n_boot=100) == diff  # seeded
