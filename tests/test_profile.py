import pytest
import torch

import vqlib
from vqlib.core.profile import current_profile, pick


@pytest.fixture
def fresh_profile(monkeypatch):
    current_profile.cache_clear()
    yield monkeypatch
    current_profile.cache_clear()


@pytest.mark.parametrize("name", ["smoke", "quick", "full"])
def test_profile_from_environment(fresh_profile, name):
    fresh_profile.setenv("VQLIB_PROFILE", name.upper())
    assert vqlib.current_profile() == name
    assert pick(1, 2, 3) == {"smoke": 1, "quick": 2, "full": 3}[name]


def test_profile_from_hardware(fresh_profile):
    fresh_profile.delenv("VQLIB_PROFILE", raising=False)
    expected = "full" if torch.cuda.is_available() else "quick"
    assert vqlib.current_profile() == expected


def test_profile_is_read_once(fresh_profile):
    fresh_profile.setenv("VQLIB_PROFILE", "smoke")
    assert vqlib.current_profile() == "smoke"
    fresh_profile.setenv("VQLIB_PROFILE", "full")
    assert vqlib.current_profile() == "smoke"


def test_unknown_profile_names_the_choices(fresh_profile):
    fresh_profile.setenv("VQLIB_PROFILE", "turbo")
    with pytest.raises(ValueError, match="'turbo'.*smoke, quick, full"):
        vqlib.current_profile()
    with pytest.raises(ValueError, match="unknown profile"):
        pick(1, 2, 3, profile="medium")


def test_default_device_is_usable():
    device = vqlib.default_device()
    assert torch.zeros(2, device=device).sum().item() == 0


def test_seed_everything_repeats():
    vqlib.seed_everything(3)
    a = torch.randn(4)
    vqlib.seed_everything(3)
    torch.testing.assert_close(a, torch.randn(4))


def test_stamp_names_profile_versions_seed_and_time():
    import time

    line = vqlib.stamp(seed=7, started=time.time() - 5)
    for part in (f"profile={vqlib.current_profile()}", f"torch={torch.__version__}",
                 f"vqlib={vqlib.__version__}", "seed=7", "wall time=5 s"):
        assert part in line
