"""Clotho-ChatGPT-Mixup reader: rejections, deterministic per-pair ratios, durations, mixing through load_clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _datasets_util import write_tone

from dcase.data.audio import load_audio, load_clip, mix_energy_matched
from dcase.data.common import BadClips, DataError
from dcase.data.manifest import read_manifest, write_manifest
from dcase.data.mixup import mix_ratio_db, read_clotho_mixup

FILES = {"a.wav": 0.2, "b c.wav": 0.3, "d.wav": 0.1}


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    clotho = tmp_path / "clotho"
    for i, (name, sec) in enumerate(FILES.items()):
        write_tone(clotho / "clotho_audio_files" / "development" / name, seconds=sec, sr=44100, freq=200 + 300 * i)
    doc = {
        "dataset": [
            {
                "selected_pair": [0, 1],
                "audio_files": ["a.wav", "b c.wav"],
                "chatgpt_mixups": ["m0 c0", "m0 c1", "m0 c2"],
            },
            {"selected_pair": [1, 2], "audio_files": ["b c.wav", "d.wav"], "chatgpt_mixups": ["m1 c0"]},
            {"selected_pair": [2, 0], "audio_files": ["d.wav", "a.wav"], "chatgpt_mixups": ["m2 c0", "m2 c1"]},
        ]
    }
    path = tmp_path / "mixup.json"
    path.write_text(json.dumps(doc))
    return path, clotho


def test_rows_rejections_and_ratios(tmp_path: Path) -> None:
    path, clotho = _setup(tmp_path)
    rows = read_clotho_mixup(path, clotho, seed=7)
    assert [r.clip_id for r in rows] == ["clotho_mixup/000000", "clotho_mixup/000001", "clotho_mixup/000002"]
    assert rows[0].mix_clip_ids == ["a.wav", "b c.wav"] and rows[0].captions == ["m0 c0", "m0 c1", "m0 c2"]
    assert rows[0].duration_s == pytest.approx(0.3) and rows[2].duration_s == pytest.approx(0.2)
    ratios = [r.mix_ratio_db for r in rows]
    assert all(-5.0 <= v <= 5.0 for v in ratios) and len(set(ratios)) == 3
    assert ratios == [float(np.random.default_rng([7, i]).uniform(-5, 5)) for i in range(3)]
    assert ratios == [mix_ratio_db(7, i) for i in range(3)]
    assert [r.mix_ratio_db for r in read_clotho_mixup(path, clotho, seed=8)] != ratios

    rej = tmp_path / "rejected.json"
    rej.write_text(json.dumps([{"idx": [0, 1]}, {"idx": [1, 0]}]))
    kept = read_clotho_mixup(path, clotho, rejected_json=rej, seed=7)
    assert [r.clip_id for r in kept] == ["clotho_mixup/000000", "clotho_mixup/000002"]
    assert kept[0].captions == ["m0 c0", "m0 c2"]
    # a pair's ratio does not depend on which pairs were dropped
    assert [r.mix_ratio_db for r in kept] == [ratios[0], ratios[2]]

    write_manifest(kept, tmp_path / "m.parquet")
    df = read_manifest(tmp_path / "m.parquet")
    row = next(df.itertuples())
    y = load_clip(row, 44100)
    a, _ = load_audio(clotho / "clotho_audio_files" / "development" / "a.wav")
    b, _ = load_audio(clotho / "clotho_audio_files" / "development" / "b c.wav")
    np.testing.assert_allclose(y, mix_energy_matched(a, b, ratios[0]))
    assert len(y) == int(0.3 * 44100)


def test_bad_rejections_and_pairs(tmp_path: Path) -> None:
    path, clotho = _setup(tmp_path)
    rej = tmp_path / "rejected.json"
    rej.write_text(json.dumps([{"idx": [5, 0]}]))
    with pytest.raises(DataError, match=r"rejected.json: entry 0: pair index 5 out of range"):
        read_clotho_mixup(path, clotho, rejected_json=rej)
    rej.write_text(json.dumps([{"idx": [1, 3]}]))
    with pytest.raises(DataError, match=r"idx \[1, 3\]: pair 1 has only 1 captions"):
        read_clotho_mixup(path, clotho, rejected_json=rej)
    rej.write_text(json.dumps([{"pair": 1}]))
    with pytest.raises(DataError, match=r"entry 0: field 'idx'"):
        read_clotho_mixup(path, clotho, rejected_json=rej)

    (clotho / "clotho_audio_files" / "development" / "d.wav").unlink()
    with pytest.raises(DataError, match=r"d.wav: pair 1: audio file not found"):
        read_clotho_mixup(path, clotho)
    bad = BadClips(skip_bad=True)
    rows = read_clotho_mixup(path, clotho, bad=bad)
    assert [r.clip_id for r in rows] == ["clotho_mixup/000000"] and len(bad) == 2

    doc = json.loads(path.read_text())
    doc["dataset"][0]["chatgpt_mixups"][1] = " "
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"pair 0: field 'chatgpt_mixups' has empty caption\(s\) at \[1\]"):
        read_clotho_mixup(path, clotho)
    path.write_text(json.dumps({"data": []}))
    with pytest.raises(DataError, match="'dataset' list"):
        read_clotho_mixup(path, clotho)
