"""The pipeline under a launcher: ``torchrun --nproc_per_node 2 -m dcase.cli pipeline run`` runs every step once,
training and extraction on both processes (one transport problem over the global batch, shards from each rank), the
other steps on rank 0, and writes one set of outputs and records."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _official_layouts import build_data_root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.distributed
def test_two_processes_run_the_pipeline_once(clotho_mini, tmp_path: Path) -> None:
    from dcase.features.store import FeatureStore

    data, run = tmp_path / "data", tmp_path / "run"
    build_data_root(clotho_mini, data, max_segments=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "dcase.cli",
        "pipeline",
        "run",
        "--profile",
        "tiny",
        "--data-root",
        str(data),
        "--out",
        str(run),
        "--until",
        "features/codec/clotho",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.max_epochs=null",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    done = sorted(p.stem for p in (run / "pipeline" / "done").glob("*.json"))
    assert "retrievers__minilm__pretrain" in done and "features__codec__clotho" in done
    assert res.stderr.count("[pipeline] retrievers/minilm/pretrain: done in") == 1  # logged by rank 0 only
    assert "training on 2 processes" in res.stderr
    assert json.loads((run / "retrievers" / "minilm" / "pretrain" / "run.json").read_text())["num_processes"] == 2
    shards = sorted(p.name for p in (run / "features" / "codec" / "clotho" / "shards").glob("*.safetensors"))
    assert any("-r000-" in s for s in shards) and any("-r001-" in s for s in shards)  # both ranks extracted
    store = FeatureStore.open(run / "features" / "codec" / "clotho")
    from dcase.data.manifest import read_manifest

    want = set(
        read_manifest(run / "manifests" / "clotho.parquet", ["development", "validation", "evaluation", "test"])[
            "clip_id"
        ]
    )
    assert set(store) == want
    assert (run / "pipeline" / "run.json").is_file() and (run / "retrievers" / "minilm" / "pretrain" / "best").exists()
