from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import FakeUpstream


@pytest.fixture(scope="module")
def slow() -> Iterator[FakeUpstream]:
    """An upstream whose answers take 0.6 s: long enough for requests to overlap."""
    fake = FakeUpstream.slow("slow", delay_s=0.6)
    yield fake
    fake.stop()
