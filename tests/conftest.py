"""Shared fixtures. Real benchmark data lives in ../shared/data beside the project root.

Where it is absent the tests that need it skip; with ITD_REQUIRE_SHARED_DATA=1 (set by .ci/run) they fail instead,
so CI can never pass by skipping.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


# fixtures that train models or start Ray: every test using one (directly or through another fixture) is `slow`
_SLOW_FIXTURES = {"tiny_lab", "ray_local"}


def pytest_collection_modifyitems(config, items):
    """Mark the tests that need a trained lab or a Ray instance as slow, so `pytest -m "not slow"` is the fast
    loop."""
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def fixed_cpu_threads():
    """One thread per core for every model the tests train or score (`itd.probes.models.cpu_threads` would give fewer
    on a machine other processes keep busy, and float sums depend on the count: the tests compare runs bit for
    bit). Subprocesses inherit it through the environment."""
    previous = os.environ.get("ITD_CPU_THREADS")
    os.environ["ITD_CPU_THREADS"] = str(os.cpu_count() or 1)
    yield
    if previous is None:
        os.environ.pop("ITD_CPU_THREADS", None)
    else:
        os.environ["ITD_CPU_THREADS"] = previous


@pytest.fixture(scope="session", autouse=True)
def lab_cache(tmp_path_factory):
    """Lab bases (`itd.lab.base_cache_dir`) are cached in a directory of this test run, never the user's cache;
    subprocesses inherit it through the environment."""
    path = tmp_path_factory.mktemp("lab-cache")
    previous = os.environ.get("ITD_LAB_CACHE")
    os.environ["ITD_LAB_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("ITD_LAB_CACHE", None)
    else:
        os.environ["ITD_LAB_CACHE"] = previous


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the shared real data (gsm8k/, mmlu/)."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file():
        reason = f"real benchmark data not found at {SHARED_DATA} (see README: Test data)"
        if os.environ.get("ITD_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(reason + "; ITD_REQUIRE_SHARED_DATA=1 forbids skipping")
        pytest.skip(reason)
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_lab(shared_data, tmp_path_factory):
    """The tiny contamination lab, built once per test run: paired twin GPT-2s continued from one base trained on
    GSM8K train items, the contaminated one also seeing 30% of 120 GSM8K test items 20 times each, the clean one as
    many placebo items in the same slots (`itd.lab.LabResult`; ground truth in `.leaked` / `.unseen`, models in
    `.contaminated` / `.clean`). 20 exposures: the old unpaired lab's 6 copies were read over ~3 epochs."""
    from itd.core import load_benchmark
    from itd.lab import LabConfig, build_lab

    gsm8k = shared_data / "gsm8k"
    return build_lab(
        load_benchmark(gsm8k / "test.jsonl"),
        load_benchmark(gsm8k / "train.jsonl"),
        tmp_path_factory.mktemp("tiny_lab"),
        LabConfig(preset="tiny", leak_rate=0.3, repeats=20, seed=0),
    )


@pytest.fixture
def llm_server():
    """A running local OpenAI-compatible server (`tests/openai_server.py`): set `.responder`, point a client at
    `.url`, inspect `.requests`; closed after the test."""
    from openai_server import OpenAIServer

    with OpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs for this module (ray.init with no address), shut down at the end."""
    try:
        import ray
    except ImportError:
        reason = "ray is not installed (pip install 'itd[ray]')"
        if os.environ.get("ITD_REQUIRE_RAY") == "1":
            pytest.fail(reason + "; ITD_REQUIRE_RAY=1 forbids skipping")
        pytest.skip(reason)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()
