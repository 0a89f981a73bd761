"""Fixtures for the engine tests: small solid-colour images (the fake model's p_by_color reads
them: red -> 1.0, blue -> 0.0, grey -> 0.5)."""

from __future__ import annotations

import pytest
from PIL import Image


@pytest.fixture
def red():
    return Image.new("RGB", (32, 32), (255, 0, 0))


@pytest.fixture
def blue():
    return Image.new("RGB", (32, 32), (0, 0, 255))


@pytest.fixture
def grey():
    return Image.new("RGB", (32, 32), (128, 128, 128))
