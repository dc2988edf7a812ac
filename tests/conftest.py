"""Suite-wide settings: hypothesis profiles, and `gpu` tests skipped where there is no CUDA GPU.

The `gpu` and `slow` markers are declared in pyproject.toml.  Hypothesis profiles:
  dev (default)  modest example counts, random seeds
  ci             the same counts, derandomized, so a CI run is reproducible (chosen when CI is set)
Pick one explicitly with HYPOTHESIS_PROFILE=dev|ci; HYPOTHESIS_PROFILE=thorough runs 10x more examples.

Every `gpu` test starts from torch.manual_seed(seed), the seed fresh each run unless FLASHLLM_SEED
fixes it; a failing test's report ends with the one command that replays it.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("dev", max_examples=25, **_COMMON)
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=250, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def one_torch_thread():
    """Run a test on one intra-op thread.

    Tests of many small tensors gain nothing from torch's thread pool and lose a lot to it on a
    busy machine (the format tests ran 5x slower on two threads at load average 4 than on one).
    Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


SEED_KEY = pytest.StashKey[int]()


def fresh_seed() -> int:
    """FLASHLLM_SEED if set, else a fresh seed (GPU tests draw new data every run)."""
    return int(os.environ["FLASHLLM_SEED"]) if "FLASHLLM_SEED" in os.environ else random.SystemRandom().randrange(2**31)


@pytest.fixture(autouse=True)
def seeded_gpu_test(request):
    """Seed torch (CPU and every CUDA device) for `gpu` tests, and remember the seed for the report."""
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    seed = fresh_seed()
    request.node.stash[SEED_KEY] = seed
    torch.manual_seed(seed)
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    seed = item.stash.get(SEED_KEY, None)
    if seed is not None and report.failed:
        report.sections.append(("replay", f"FLASHLLM_SEED={seed} python -m pytest '{item.nodeid}'"))
    return report
