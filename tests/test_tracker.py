"""The tracker that reads clips back into captions: states, shapes, the loss, overfitting, caching, bad input."""

import pytest
import torch

from vqlib.data.mnist import caption, moving_mnist
from vqlib.judges.tracker import (Tracker, TrackerConfig, caption_match, logits_to_states, motion_states, read_states,
                                  tracker_features,
                                  states_to_caption, tracker_loss, train_tracker)
from vqlib.training.loop import TrainConfig

T, S = 4, 16


def config(**changes) -> TrackerConfig:
    return TrackerConfig.for_profile(T, S, profile="smoke", **changes)


def test_motion_states_by_hand():
    states = motion_states(torch.tensor([[3, 7], [5, 5]]), torch.tensor([[0, 3], [2, 1]]))
    expected = torch.zeros(2, 10, dtype=torch.long)
    expected[0, 3], expected[0, 7] = 1, 4  # "a 3 moves left while a 7 moves down"
    expected[1, 5] = 3  # a repeated class keeps the first digit's heading (up)
    assert torch.equal(states, expected)
    with pytest.raises(ValueError, match=r"both be \(N, M\)"):
        motion_states(torch.tensor([[3, 7]]), torch.tensor([[0]]))


def test_states_to_caption_inverts_motion_states():
    states = motion_states(torch.tensor([[7, 3]]), torch.tensor([[3, 0]]))
    assert states_to_caption(states[0]) == caption([3, 7], [0, 3])  # digits in increasing order
    assert states_to_caption(torch.zeros(10, dtype=torch.long)) == ""


def test_logits_to_states_reads_the_top_classes_with_their_headings():
    logits = torch.zeros(1, 10, 5)
    logits[0, 2, 0], logits[0, 6, 0], logits[0, 9, 0] = 5.0, 4.0, 1.0  # class scores
    logits[0, 2, 1 + 3] = 2.0  # class 2 heads down
    logits[0, 6, 1 + 1] = 2.0  # class 6 heads right
    expected = torch.zeros(1, 10, dtype=torch.long)
    expected[0, 2] = 4
    assert torch.equal(logits_to_states(logits, 1), expected)
    expected[0, 6] = 2
    assert torch.equal(logits_to_states(logits, 2), expected)


def test_shapes_finite_loss_and_gradients_reach_both_streams():
    torch.manual_seed(0)
    model = Tracker(config())
    videos = torch.rand(3, T, 1, S, S)
    logits = model(videos)
    assert logits.shape == (3, 10, 5) and logits.dtype == torch.float32
    states = motion_states(torch.tensor([[1], [4], [8]]), torch.tensor([[0], [1], [3]]))
    terms = tracker_loss(model, (videos, states))
    assert torch.isfinite(terms["loss"]) and 0 <= terms["clip_accuracy"] <= 1
    terms["loss"].backward()
    assert model.appearance[0].weight.grad.abs().sum() > 0 and model.motion[0].weight.grad.abs().sum() > 0


def test_overfits_a_few_clips_then_loads_from_the_cache_and_matches_their_captions():
    data = moving_mnist("train", n=8, frames=T, size=S, digit_size=10, num_digits=1, profile="smoke")
    train = TrainConfig(steps=200, batch_size=8, lr=3e-3, log_every=50)
    model, history = train_tracker(data, config(), train, "test-tracker", progress=False)
    first, last = history.series("loss")[1][0], history.series("loss")[1][-1]
    assert last < 0.1 * first, (first, last)
    assert caption_match(model, data.videos, data.labels, data.directions).all()
    again, history2 = train_tracker(data, config(), train, "test-tracker", progress=False)  # loads
    assert history2.steps == history.steps and not again.training
    torch.testing.assert_close(again(data.videos), model(data.videos))
    before = {k: v.clone() for k, v in again.state_dict().items()}
    read_states(again, data.videos)
    assert all(torch.equal(before[k], v) for k, v in again.state_dict().items())


def test_two_digits_are_read_as_two_states():
    torch.manual_seed(0)
    model = Tracker(config(num_digits=2))
    states = read_states(model, torch.rand(4, T, 1, S, S))
    assert states.shape == (4, 10) and ((states > 0).sum(1) == 2).all()


def test_bad_inputs_are_clear_errors():
    model = Tracker(config())
    with pytest.raises(ValueError, match=r"\(B, 4, 1, 16, 16\)"):
        model(torch.rand(2, T, 1, S + 4, S + 4))
    with pytest.raises(ValueError, match=r"\(B, 4, 1, 16, 16\)"):
        model(torch.rand(2, 1, T, S, S))  # channels before frames
    with pytest.raises(TypeError, match="float clips"):
        model(torch.zeros(2, T, 1, S, S, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of 4"):
        TrackerConfig(T, 18)
    with pytest.raises(ValueError, match="num_digits"):
        TrackerConfig(T, S, num_digits=11)
    with pytest.raises(ValueError, match="one caption per clip"):
        caption_match(model, torch.rand(2, T, 1, S, S), torch.zeros(3, 1, dtype=torch.long),
                      torch.zeros(3, 1, dtype=torch.long))


def test_features_are_the_pooled_activations_that_the_heads_read():
    torch.manual_seed(0)
    model = Tracker(config()).eval()
    videos = torch.rand(3, T, 1, S, S)
    feats = model.features(videos)
    w2 = model.config.widths[1]
    assert feats.shape == (3, 2 * w2)
    headings = model.motion[-3:](feats[:, w2:]).view(3, 10, -1)  # the motion stream's MLP on its half
    torch.testing.assert_close(headings, model(videos)[..., 1:])
    torch.testing.assert_close(tracker_features(model, videos, batch_size=2), feats)
    with pytest.raises(ValueError, match="expected clips"):
        model.features(torch.rand(3, T, 1, 2 * S, 2 * S))
