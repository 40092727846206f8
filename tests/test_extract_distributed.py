"""Two processes (torchrun, gloo on CPU, seen by Accelerate as MULTI_CPU) give the same store as one process.

Run as a script by torchrun: ``python -m torch.distributed.run --nproc_per_node 2 THIS_FILE MANIFEST OUT``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _worker(manifest: str, out: str) -> None:
    import torch

    from dcase.features.extract import extract_codec, process_state

    torch.set_num_threads(1)
    state = process_state()
    assert state.num_processes == 2, f"expected 2 processes, got {state.num_processes} ({state.distributed_type})"
    rep = extract_codec(manifest, out, "tiny", batch_size=2, shard_size=2, progress=False)
    Path(out, f"done-{state.process_index}.txt").write_text(f"{rep.encoded}\n")


@pytest.mark.distributed
def test_two_process_extraction_equals_one_process(tmp_path):
    import soundfile as sf

    from dcase.data.manifest import ManifestRow, write_manifest
    from dcase.features.extract import extract_codec
    from dcase.features.store import FeatureStore

    rng = np.random.default_rng(5)
    rows = []
    for i in range(7):
        sec = 0.2 + 0.05 * i
        p = tmp_path / f"c{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(int(sec * 24000))).astype(np.float32), 24000)
        rows.append(ManifestRow(f"c{i}.wav", str(p), "development", "synth", sec, 24000, ["s"]))
    manifest = tmp_path / "m.parquet"
    write_manifest(rows, manifest)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        f"--master_port={env['MASTER_PORT']}",
        __file__,
        str(manifest),
        str(tmp_path / "two"),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    # each process encoded its own share (rows i % 2 == rank), and wrote its own shards
    assert [int((tmp_path / "two" / f"done-{r}.txt").read_text()) for r in (0, 1)] == [4, 3]
    ranks = {p.name.split("-")[1] for p in (tmp_path / "two" / "shards").glob("*.safetensors")}
    assert ranks == {"r000", "r001"}

    extract_codec(manifest, tmp_path / "one", "tiny", batch_size=2, progress=False)
    one, two = FeatureStore.open(tmp_path / "one"), FeatureStore.open(tmp_path / "two")
    assert sorted(one) == sorted(two) == sorted(r.clip_id for r in rows)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])
    strip = ("created", "manifest_hashes")
    assert {k: v for k, v in one.provenance.items() if k not in strip} == {
        k: v for k, v in two.provenance.items() if k not in strip
    }


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
