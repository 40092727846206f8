"""Synthetic corpus: determinism, Clotho layout read back through the reader, captions faithful to the audio."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from dcase.data.clotho import read_clotho, read_retrieval_captions
from dcase.data.manifest import read_manifest
from dcase.data.mixup import read_clotho_mixup
from dcase.data.sources import build_manifest
from dcase.data.synth import (
    BACKGROUND_PHRASES,
    EVENT_PHRASES,
    MIXUP_JSON,
    RETRIEVAL_TRUTH_CSV,
    SAMPLE_RATE,
    ClipSpec,
    Event,
    _render_event,
    caption_set,
    make_synth_corpus,
    render_clip,
    sample_spec,
    split_sizes,
    vocabulary,
)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_corpus(tmp_path_factory.mktemp("synth") / "s", n_clips=12, seed=3)


def test_layout_and_read_back(corpus: Path, tmp_path: Path) -> None:
    for split in ("development", "validation", "evaluation", "test"):
        assert (corpus / "clotho_audio_files" / split).is_dir()
        assert (corpus / f"clotho_metadata_{split}.csv").is_file()
    assert split_sizes(12) == {"development": 8, "validation": 2, "evaluation": 2}
    res = build_manifest("clotho", corpus, tmp_path / "m.parquet")
    df = read_manifest(tmp_path / "m.parquet")
    assert df.groupby("split").size().to_dict() == {
        "development": 8,
        "validation": 2,
        "evaluation": 2,
        "test": 2,
        "retrieval_audio": 2,
    }
    assert len(res.frame) == 16 and df["clip_id"].is_unique
    cap = df[df["split"].isin(["development", "validation", "evaluation"])]
    assert all(len(c) == 5 and len(set(c)) >= 3 for c in cap["captions"])
    assert all(c[0].islower() and c.endswith(".") for caps in cap["captions"] for c in caps)
    assert ((df["duration_s"] >= 2.0) & (df["duration_s"] <= 6.0)).all()
    info = sf.info(df.loc[0, "audio_path"])
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    # neutral file names: nothing about the content
    assert all(n.startswith("recording ") for n in df["clip_id"])
    # Task 8: one query per retrieval clip, the ground truth pairs them
    queries = read_retrieval_captions(corpus)
    truth = pd.read_csv(corpus / RETRIEVAL_TRUTH_CSV, dtype=str, keep_default_na=False)
    assert truth["caption"].tolist() == queries
    assert set(truth["file_name"]) == set(df[df["split"] == "retrieval_audio"]["clip_id"])
    # the mixup JSON is in the released format and resolves against the development clips
    mix = read_clotho_mixup(corpus / MIXUP_JSON, corpus)
    doc = json.loads((corpus / MIXUP_JSON).read_text())
    assert len(mix) == len(doc["dataset"]) == 2
    dev = set(df[df["split"] == "development"]["clip_id"])
    assert all(set(r.mix_clip_ids) <= dev for r in mix)


def test_deterministic_bytes(corpus: Path, tmp_path: Path) -> None:
    again = make_synth_corpus(tmp_path / "again", n_clips=12, seed=3)
    assert _tree_hashes(again) == _tree_hashes(corpus)
    other = make_synth_corpus(tmp_path / "other", n_clips=12, seed=4)
    h_other, h_ref = _tree_hashes(other), _tree_hashes(corpus)
    assert h_other.keys() == h_ref.keys()
    wavs = [k for k in h_ref if k.endswith(".wav")]
    assert all(h_other[k] != h_ref[k] for k in wavs)
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_synth_corpus(tmp_path / "again", n_clips=12, seed=3)


def test_captions_describe_the_events() -> None:
    phrases = {k: [p for _, p in v] for k, v in EVENT_PHRASES.items()}
    all_caps: list[str] = []
    for i in range(60):
        rng = np.random.default_rng([0, i])
        spec = sample_spec(rng)
        caps = caption_set(spec, rng)
        all_caps += caps
        kinds = {e.kind for e in spec.events}
        for c in caps:
            for kind, ps in phrases.items():
                present = any(p in c for p in ps)
                assert present == (kind in kinds), (kind, c, spec)
            if spec.background:
                assert any(p in c for p in BACKGROUND_PHRASES[spec.background])
            else:
                assert "background" not in c and " over " not in c
    vocab = vocabulary(all_caps)
    assert 50 <= len(vocab) <= 120


def test_audio_follows_the_structure() -> None:
    rng = np.random.default_rng(0)
    n = SAMPLE_RATE // 2
    rising = _render_event("rising", n, rng)
    zc = np.abs(np.diff(np.signbit(rising).astype(int)))
    assert zc[n // 2 :].sum() > 2 * zc[: n // 2].sum()  # frequency goes up
    low, high = _render_event("low_tone", n, rng), _render_event("high_tone", n, rng)
    assert np.abs(np.diff(np.signbit(high).astype(int))).sum() > 4 * np.abs(np.diff(np.signbit(low).astype(int))).sum()
    spec = ClipSpec((Event("noise", "loud", 0.2, 0.5), Event("beeps", "soft", 1.2, 0.6)), None, 2.5)
    y = render_clip(spec, np.random.default_rng(1))
    assert len(y) == int(2.5 * SAMPLE_RATE) and y.dtype == np.float32
    seg = lambda a, b: y[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]  # noqa: E731
    assert np.abs(seg(0.2, 0.7)).max() > 3 * np.abs(seg(1.2, 1.8)).max() > 0
    assert np.abs(seg(0.0, 0.19)).max() == 0 and np.abs(seg(1.9, 2.5)).max() == 0


def test_reader_sees_every_clip(corpus: Path) -> None:
    rows = read_clotho(corpus, ["development"], decode_check=False)
    names = sorted(p.name for p in (corpus / "clotho_audio_files" / "development").glob("*.wav"))
    assert sorted(r.clip_id for r in rows) == names
