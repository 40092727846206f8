"""Extraction driver and CLI: codes equal lone encodings, mixup rows, bad input, embeddings, clotho-mini."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from dcase.cli import app
from dcase.data.audio import load_audio, mix_energy_matched
from dcase.data.manifest import ManifestRow, read_manifest, write_manifest
from dcase.features.codec import load_codec
from dcase.features.extract import ExtractError, extract_codec, extract_embeddings
from dcase.features.store import FeatureStore, verify_store


def _wav(path: Path, x: np.ndarray, sr: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype="FLOAT")
    return str(path)


def _row(cid: str, path: str, seconds: float, sr: int, **kw) -> ManifestRow:
    return ManifestRow(cid, path, "development", kw.pop("source", "synth"), seconds, sr, ["a sound"], **kw)


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for i, (sec, sr) in enumerate([(0.5, 44100), (0.8, 24000), (0.3, 16000), (0.6, 44100)]):
        x = (0.1 * rng.standard_normal(int(sec * sr))).astype(np.float32)
        rows.append(_row(f"c{i}.wav", _wav(tmp_path / "a" / f"c{i}.wav", x, sr), sec, sr))
    rows.append(
        _row(
            "mix0.wav",
            rows[0].audio_path,
            0.8,
            44100,
            source="clotho_mixup",
            mix_clip_ids=["c0.wav", "c1.wav"],
            mix_audio_paths=[rows[0].audio_path, rows[1].audio_path],
            mix_ratio_db=3.0,
        )
    )
    return rows


def test_codes_equal_lone_encoding_of_resampled_and_mixed_audio(tmp_path, corpus):
    manifest = tmp_path / "m.parquet"
    write_manifest(corpus, manifest)
    out = tmp_path / "store"
    rep = extract_codec(manifest, out, "tiny", batch_size=3, progress=False)
    assert rep.encoded == 5 and rep.store_clips == 5
    store = FeatureStore.open(out)
    assert store.provenance["kind"] == "codec" and store.provenance["sample_rate"] == 24000
    assert store.provenance["hop"] == 320 and store.provenance["n_codebooks"] == 4
    assert (out / "run" / "run.json").is_file() and (out / "run" / "config.yaml").is_file()
    codec = load_codec("tiny")
    for r in corpus:
        if r.source == "clotho_mixup":
            a, _ = load_audio(r.mix_audio_paths[0], 24000)
            b, _ = load_audio(r.mix_audio_paths[1], 24000)
            x = mix_energy_matched(a, b, 3.0)
        else:
            x, _ = load_audio(r.audio_path, 24000)
        ref = codec.encode(x)
        assert store[r.clip_id].shape == (4, math.ceil(len(x) / 320))
        np.testing.assert_array_equal(store[r.clip_id], ref)
    assert verify_store(out, manifest)["ok"] == 5


def test_each_audio_file_is_read_once_and_fingerprinted_by_its_bytes(tmp_path, corpus, monkeypatch):
    """Extraction reads a file's bytes once: it hashes them and decodes them from memory (no second read by path,
    no separate sha256 pass); the recorded sha256 is that of the file's bytes, for both files of a mixup row."""
    import hashlib
    import os

    import dcase.data.audio as audio_mod
    import dcase.io
    from dcase.features.store import scan_shards

    manifest = tmp_path / "m.parquet"
    write_manifest(corpus, manifest)
    decoded_from: list[type] = []
    real_read = audio_mod.sf.read

    def spy_read(file, *a, **k):
        decoded_from.append(type(file))
        return real_read(file, *a, **k)

    def no_hash_pass(*a, **k):
        raise AssertionError("extraction hashed an audio file by reading it again")

    monkeypatch.setattr(audio_mod.sf, "read", spy_read)
    monkeypatch.setattr(dcase.io, "sha256_file", no_hash_pass)
    out = tmp_path / "store"
    assert extract_codec(manifest, out, "tiny", batch_size=3, progress=False).encoded == 5
    assert len(decoded_from) == 6 and not any(issubclass(t, str | os.PathLike) for t in decoded_from)
    entries = scan_shards(out)
    for r in corpus:
        paths = r.mix_audio_paths if r.source == "clotho_mixup" else [r.audio_path]
        want = []
        for p in paths:
            st = os.stat(p)
            sha = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            want.append({"path": p, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha})
        assert entries[r.clip_id]["audio"] == want


def _bad_corpus(tmp_path):
    rows = [_row("good.wav", _wav(tmp_path / "good.wav", np.full(8000, 0.1, np.float32), 24000), 1 / 3, 24000)]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage")
    rows.append(_row("corrupt.wav", str(corrupt), 1.0, 24000))
    rows.append(_row("empty.wav", _wav(tmp_path / "empty.wav", np.zeros(0, np.float32), 24000), 1.0, 24000))
    nan = np.full(4000, 0.1, np.float32)
    nan[100] = np.nan
    rows.append(_row("nan.wav", _wav(tmp_path / "nan.wav", nan, 24000), 1 / 6, 24000))
    rows.append(_row("short.wav", _wav(tmp_path / "short.wav", np.full(100, 0.1, np.float32), 24000), 1 / 240, 24000))
    rows.append(_row("silent.wav", _wav(tmp_path / "silent.wav", np.zeros(4800, np.float32), 24000), 0.2, 24000))
    write_manifest(rows, tmp_path / "bad.parquet")
    return tmp_path / "bad.parquet"


@pytest.mark.parametrize("bad", ["corrupt.wav", "empty.wav", "nan.wav", "short.wav"])
def test_bad_clip_is_an_error_naming_it(tmp_path, bad):
    manifest = _bad_corpus(tmp_path)
    df = read_manifest(manifest)
    write_manifest(df[df["clip_id"].isin(["good.wav", bad])], tmp_path / "one.parquet")
    with pytest.raises(ExtractError, match=rf"clip '{bad}'"):
        extract_codec(tmp_path / "one.parquet", tmp_path / "s", "tiny", progress=False)


def test_skip_bad_lists_every_bad_clip_and_store_stays_valid(tmp_path, caplog):
    manifest = _bad_corpus(tmp_path)
    with caplog.at_level(logging.WARNING):
        rep = extract_codec(manifest, tmp_path / "s", "tiny", skip_bad=True, progress=False)
    skipped = {s["clip_id"]: s["reason"] for s in json.loads((tmp_path / "s" / "skipped.json").read_text())}
    assert sorted(skipped) == ["corrupt.wav", "empty.wav", "nan.wav", "short.wav"]
    assert "unreadable" in skipped["corrupt.wav"] and "empty" in skipped["empty.wav"]
    assert "NaN" in skipped["nan.wav"] and "shorter than one frame" in skipped["short.wav"]
    assert len(rep.skipped) == 4 and rep.encoded == 2
    store = FeatureStore.open(tmp_path / "s")
    assert sorted(store) == ["good.wav", "silent.wav"] and store["silent.wav"].shape == (4, 15)
    assert "silent audio" in caplog.text  # silent audio is valid: encoded, with a warning
    assert verify_store(store, manifest)["skipped"] == 4


def test_cli_codec_verify_and_errors(tmp_path, corpus):
    manifest = tmp_path / "m.parquet"
    write_manifest(corpus[:2], manifest)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "extract",
            "codec",
            "--manifest",
            str(manifest),
            "--out",
            str(tmp_path / "s"),
            "--codec-config",
            "tiny",
            "--batch-size",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["extract", "verify", str(tmp_path / "s"), "--manifest", str(manifest)])
    assert res.exit_code == 0 and "OK" in res.output
    write_manifest(corpus[:3], tmp_path / "m3.parquet")
    res = runner.invoke(app, ["extract", "verify", str(tmp_path / "s"), "--manifest", str(tmp_path / "m3.parquet")])
    assert res.exit_code == 2 and "'c2.wav': missing" in res.output
    res = runner.invoke(app, ["extract", "codec", "--manifest", str(manifest), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "exactly one of --codec" in res.output


def test_embed_extraction_with_cnext(tmp_path, corpus):
    from dcase.models.cnext import CNext, CNextConfig

    torch.manual_seed(0)
    model = CNext(CNextConfig.tiny()).eval()
    model.save_pretrained(tmp_path / "cnext")
    manifest = tmp_path / "m.parquet"
    write_manifest(corpus, manifest)
    extract_embeddings(manifest, tmp_path / "e", tmp_path / "cnext", batch_size=4, progress=False)
    store = FeatureStore.open(tmp_path / "e")
    assert store.provenance["kind"] == "embed" and store.provenance["embed_dim"] == 64
    assert store.provenance["checkpoint_sha256"]
    for r in corpus[:4]:
        x, _ = load_audio(r.audio_path, 32000)
        with torch.no_grad():
            ref = model.clip_embedding(torch.from_numpy(x)[None])[0].numpy()
        np.testing.assert_allclose(store[r.clip_id], ref, atol=1e-5, rtol=1e-4)
    assert verify_store(store, manifest)["ok"] == 5


@pytest.mark.slow  # over 5 s on 2 CPU cores
def test_clotho_mini_store_is_complete_with_expected_frame_counts(tmp_path, clotho_mini):
    import soundfile

    rows = []
    for p in sorted((clotho_mini / "audio").glob("*.wav")):
        info = soundfile.info(str(p))
        rows.append(
            ManifestRow(p.name, str(p), "evaluation", "clotho", info.frames / info.samplerate, info.samplerate, ["x"])
        )
    write_manifest(rows, tmp_path / "m.parquet")
    extract_codec(tmp_path / "m.parquet", tmp_path / "s", "tiny", batch_size=4, progress=False)
    store = FeatureStore.open(tmp_path / "s")
    assert verify_store(store, tmp_path / "m.parquet")["ok"] == len(rows) == 12
    for r in rows:
        n_native = soundfile.info(r.audio_path).frames
        n24 = round(n_native * 24000 / r.sample_rate)  # soxr's output length
        assert r.sample_rate == 44100 and 15 <= r.duration_s <= 31
        assert store[r.clip_id].shape == (4, math.ceil(n24 / 320))
        assert abs(store[r.clip_id].shape[1] - r.duration_s * 75) <= 1
