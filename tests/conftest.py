"""Shared fixtures: offline environment, a tiny model built in this session, one Prefect test harness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "support_tickets.jsonl"

# Tests never reach a network: fail fast instead of waiting on a hub that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A developer's exported registry URL must not receive the test runs (tests that want one set it themselves).
os.environ.pop("SFTJUDGE_REGISTRY_URL", None)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sftjudge_home(tmp_path_factory) -> Path:
    """A model cache for this session only; the tiny model is built into it on first use."""
    home = tmp_path_factory.mktemp("sftjudge-home")
    os.environ["SFTJUDGE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(sftjudge_home) -> Path:
    from sftjudge.models.embedded import resolve_model

    return Path(resolve_model("tiny", sftjudge_home))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from sftjudge.models.loading import load_causal_lm

    return load_causal_lm(str(tiny_model_dir))


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect backend for every flow test (start-up costs ~10 s here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> Path:
    """`vllm.python` = this Python then starts the stand-in for vLLM's server (tests/vllm_stand_in.py); returns the
    file where the stand-in records every start and request."""
    from vllm_stand_in import install

    install(tmp_path / "fake-vllm")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "fake-vllm"), str(Path(__file__).parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    record = tmp_path / "vllm-record.jsonl"
    monkeypatch.setenv("VLLM_STAND_IN_RECORD", str(record))
    return record


# pip resolving the GPU images' two stacks against PyPI takes about a minute (half of it waiting on the network):
# it starts as soon as the session's tests are known and runs beside them at the lowest CPU priority, on cycles the
# model tests leave idle (tests/test_gpu_images.py).
_gpu_resolutions = None


def pytest_collection_finish(session):
    global _gpu_resolutions
    if any(item.get_closest_marker("resolver") for item in session.items):
        import concurrent.futures
        import sys

        sys.path.insert(0, str(REPO / "scripts"))
        from gpu_pins import STACKS, resolve

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-pins")
        _gpu_resolutions = pool.submit(
            lambda: {s.name: resolve(s, REPO / s.constraints, background=True) for s in STACKS})
        pool.shutdown(wait=False)


@pytest.fixture(scope="session")
def gpu_resolutions() -> dict:
    """name -> {package: version} of each GPU stack as pip resolves it with its constraints file."""
    return _gpu_resolutions.result(timeout=900)
