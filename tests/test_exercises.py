"""vqlib.book.exercises: a right answer prints ✓, a wrong one raises a message that says what is wrong."""

from collections import namedtuple

import numpy as np
import pytest
import torch

from vqlib.book.exercises import ExerciseError, check, check_function, check_shape, difference


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ExerciseError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_a_right_answer_prints_a_tick_and_returns_nothing(capsys):
    x = torch.randn(4, 8)
    assert check("z_q", x.clone(), x) is None
    assert capsys.readouterr().out == "✓ z_q: correct\n"


def test_the_error_is_an_assertion_error_starting_with_a_cross():
    message = _error(check, "kl", torch.zeros(3), torch.ones(3))
    assert issubclass(ExerciseError, AssertionError)
    assert message.startswith("✗ kl[")


def test_a_wrong_element_is_named_with_its_index_values_and_difference():
    expected = torch.zeros(2, 3)
    got = expected.clone()
    got[1, 2] = 0.5
    got[0, 0] = 0.1
    assert difference(got, expected, "x_hat") == (
        "x_hat[1, 2] is 0.5 but should be 0 (off by 0.5; the tolerance there is 1e-06); "
        "2 of 6 elements differ, this one the most")
    got[0, 0] = 0.0
    assert difference(got, expected, "x_hat").endswith("it is the only one of the 6 elements that differs")


def test_floats_within_tolerance_pass_and_the_tolerance_can_be_set():
    expected = torch.tensor([1.0, 100.0])
    assert difference(expected * (1 + 5e-5), expected, "y") is None  # rtol 1e-4 by default
    assert difference(expected * (1 + 5e-4), expected, "y") is not None
    assert difference(expected * (1 + 5e-4), expected, "y", rtol=1e-3) is None
    assert difference(torch.tensor(0.01), torch.tensor(0.0), "y", atol=0.1) is None


def test_shape_mismatches_say_both_shapes_and_guess_the_mistake():
    assert difference(torch.zeros(3, 4), torch.zeros(4, 3), "z") == \
        "z has shape (3, 4) but should have shape (4, 3) (the same number of elements: transposed?)"
    assert "squeeze or unsqueeze?" in difference(torch.zeros(3), torch.zeros(3, 1), "z")
    assert "reshaped or permuted?" in difference(torch.zeros(2, 6), torch.zeros(3, 4), "z")
    assert difference(torch.zeros(2), torch.zeros(3), "z") == "z has shape (2,) but should have shape (3,)"


def test_dtype_and_container_type_mismatches():
    assert difference(torch.zeros(3, dtype=torch.float64), torch.zeros(3), "z") == \
        "z has dtype torch.float64 but should have dtype torch.float32"
    assert difference(np.zeros(3, dtype=np.float32), torch.zeros(3), "z") == \
        "z is an array of shape (3,) (float32) but should be a tensor of shape (3,) (torch.float32)"
    assert difference([0.0, 0.0], torch.zeros(2), "z") == \
        "z is a list but should be a tensor of shape (2,) (torch.float32)"


def test_plain_numbers_compare_with_tensors_by_value():
    assert difference(torch.tensor(2.0), 2, "n") is None
    assert difference(3, 3.5, "n").startswith("n is 3 but should be 3.5 (off by 0.5")


def test_integers_and_booleans_are_exact():
    assert difference(torch.tensor([0, 1, 7, 3]), torch.tensor([0, 1, 5, 3]), "indices") == \
        "indices[2] is 7 but should be 5; it is the only one of the 4 elements that differs"
    assert difference(torch.tensor([True, False]), torch.tensor([True, True]), "mask").startswith(
        "mask[1] is False but should be True")


def test_nan_is_reported_and_matching_nans_or_infs_are_equal():
    nan, inf = float("nan"), float("inf")
    assert difference(torch.tensor([nan, inf]), torch.tensor([nan, inf]), "v") is None
    assert difference(torch.tensor([1.0, nan]), torch.tensor([1.0, 2.0]), "v") == \
        "v[1] is nan but should be 2; it is the only one of the 2 elements that differs"


def test_gradients_and_devices_do_not_matter():
    x = torch.ones(2, requires_grad=True)
    assert difference(x * 2, torch.full((2,), 2.0), "y") is None


def test_nested_containers_name_the_wrong_item():
    Out = namedtuple("Out", "z_q loss indices")
    expected = Out(torch.zeros(2), torch.tensor(1.0), torch.tensor([0, 1]))
    assert difference(Out(torch.zeros(2), torch.tensor(1.0), torch.tensor([0, 2])), expected, "out") == \
        "out.indices[1] is 2 but should be 1; it is the only one of the 2 elements that differs"
    assert difference({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 3]}, "d") == "d['b'][1] is 2 but should be 3"
    assert difference({"a": 1}, {"a": 1, "b": 2}, "d") == "d has keys ['a']; missing ['b']"
    assert difference((1, 2), (1, 2, 3), "t") == "t has 2 items but should have 3"
    assert difference("relu", "gelu", "activation") == "activation is 'relu' but should be 'gelu'"


def test_check_shape_accepts_none_as_any_size(capsys):
    check_shape("z_e", torch.zeros(5, 64, 7, 7), (None, 64, 7, 7))
    assert capsys.readouterr().out == "✓ z_e: correct shape (5, 64, 7, 7)\n"
    assert _error(check_shape, "z_e", torch.zeros(5, 64, 7), (None, 64, 7, 7)) == \
        "✗ z_e has shape (5, 64, 7) but should have shape (any, 64, 7, 7)"


def test_check_function_names_the_input_it_fails_on(capsys):
    def square(x):
        return x * x

    check_function("square", square, torch.square, [torch.arange(3.0), (torch.ones(2, 2),)])
    assert capsys.readouterr().out == "✓ square: correct on 2 inputs\n"
    message = _error(check_function, "square", lambda x: x * x + (x > 1), torch.square,
                     [torch.zeros(2), torch.arange(4.0)])
    assert message.startswith("✗ on input 2 of 2 (a tensor of shape (4,) (torch.float32)): square(...)[2] is 5")


def test_check_function_lets_the_readers_errors_through():
    def stub(x):
        raise NotImplementedError("Exercise 2.1: stub() is not implemented yet")

    with pytest.raises(NotImplementedError, match="Exercise 2.1"):
        check_function("stub", stub, torch.square, [torch.zeros(1)])
    with pytest.raises(ValueError, match="at least one input"):
        check_function("stub", stub, torch.square, [])
