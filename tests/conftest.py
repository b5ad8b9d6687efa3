"""Shared fixtures. Real benchmark data lives in ../shared/data beside the project root.

Where it is absent the tests that need it skip; with ITD_REQUIRE_SHARED_DATA=1 (set by .ci/run) they fail instead,
so CI can never pass by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the shared real data (gsm8k/, mmlu/)."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file():
        reason = f"real benchmark data not found at {SHARED_DATA} (see README: Test data)"
        if os.environ.get("ITD_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(reason + "; ITD_REQUIRE_SHARED_DATA=1 forbids skipping")
        pytest.skip(reason)
    return SHARED_DATA
