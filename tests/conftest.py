"""Shared fixtures. Every test runs offline (HF_HUB_OFFLINE=1) with few threads and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DCASE_SHARED", REPO.parent / "shared"))


def _shared(sub: str) -> Path:
    """A folder of shared/. Absent, its tests skip on a developer's machine but fail under CI (``CI`` set), where
    shared/ is always laid beside the checkout: there a skip would hide a lost data folder or a moved path."""
    path = SHARED / sub
    if not path.exists():
        why = f"{path} is absent: these checks need the project's shared/ folder beside the checkout (or DCASE_SHARED)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)
    return path


@pytest.fixture
def clotho_mini() -> Path:
    """../shared/clotho-mini: 12 real Clotho evaluation clips (skips with a reason when absent)."""
    return _shared("clotho-mini")


@pytest.fixture
def clotho_oracle() -> Path:
    """../shared/oracles/clotho_eval: official references, a published system's predictions and scores."""
    return _shared("oracles/clotho_eval")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny models, which gain nothing from a second thread; on a busy 2-core host the OpenMP
    spin-waits of 2-thread PyTorch made them up to 10x slower. Restored after each test."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
