"""Feature store: atomic shards, resume after a kill, provenance refusal, read API, verification."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from dcase.data.manifest import ManifestRow, write_manifest
from dcase.features import extract as extract_mod
from dcase.features.extract import extract_codec
from dcase.features.store import (
    FeatureStore,
    ProvenanceError,
    ShardWriter,
    StoreError,
    finalize_store,
    provenance_diff,
    verify_store,
    write_provenance,
)


def _corpus(tmp_path, n=6, seconds=(0.4, 0.9, 0.3, 0.7, 0.5, 0.6)):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        p = tmp_path / "audio" / f"clip{i}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(p, (0.1 * rng.standard_normal(int(seconds[i] * 24000))).astype(np.float32), 24000)
        rows.append(ManifestRow(f"clip{i}.wav", str(p), "development", "synth", seconds[i], 24000, ["a sound"]))
    write_manifest(rows, tmp_path / "m.parquet")
    return tmp_path / "m.parquet"


def test_resume_after_kill_mid_run(tmp_path, monkeypatch):
    manifest = _corpus(tmp_path)
    clean = tmp_path / "clean"
    extract_codec(manifest, clean, "tiny", batch_size=2, shard_size=2, progress=False)

    out = tmp_path / "store"
    calls = {"n": 0}
    real = extract_mod.run_extraction

    def killing_encode(run):
        def wrapped(rows, out_, prov, encode_batch, *a, **k):
            def enc(waves):
                calls["n"] += 1
                if calls["n"] == 3:  # the job dies while encoding its third batch
                    raise KeyboardInterrupt
                return encode_batch(waves)

            return run(rows, out_, prov, enc, *a, **k)

        return wrapped

    monkeypatch.setattr(extract_mod, "run_extraction", killing_encode(real))
    with pytest.raises(KeyboardInterrupt):
        extract_codec(manifest, out, "tiny", batch_size=2, shard_size=2, progress=False)
    monkeypatch.setattr(extract_mod, "run_extraction", real)
    shards = sorted((out / "shards").glob("*.safetensors"))
    assert len(shards) == 2 and not (out / "index.json").exists()
    (out / "shards" / ".part-r000-x.safetensors.123.tmp").write_bytes(b"half a shard")  # a SIGKILLed write
    with pytest.raises(StoreError, match="did not finish"):
        FeatureStore.open(out)

    rep = extract_codec(manifest, out, "tiny", batch_size=2, shard_size=2, progress=False)
    assert rep.already_done == 4 and rep.encoded == 2
    a, b = FeatureStore.open(out), FeatureStore.open(clean)
    assert sorted(a) == sorted(b) and len(a) == 6
    for k in b:
        np.testing.assert_array_equal(a[k], b[k])
    # a finished store is a no-op to rerun
    assert extract_codec(manifest, out, "tiny", progress=False).encoded == 0


def test_provenance_refusal_names_the_differing_fields(tmp_path):
    manifest = _corpus(tmp_path, n=2)
    out = tmp_path / "store"
    extract_codec(manifest, out, "tiny", progress=False)
    cfg = tmp_path / "codec16k.json"
    cfg.write_text(
        json.dumps(
            {
                "encoder_hidden_size": 4,
                "decoder_hidden_size": 32,
                "n_codebooks": 4,
                "codebook_size": 64,
                "codebook_dim": 4,
                "hidden_size": 32,
                "sampling_rate": 16000,
            }
        )
    )
    with pytest.raises(ProvenanceError, match=r"(?s)sample_rate: store has 24000, this run has 16000"):
        extract_codec(manifest, out, str(cfg), progress=False)
    assert len(FeatureStore.open(out)) == 2  # untouched


def test_provenance_diff_ignores_run_fields():
    a = {"kind": "codec", "sample_rate": 24000, "manifest_hash": "x", "extractor_config": {"n": 1, "m": 2}}
    b = {"kind": "codec", "sample_rate": 24000, "manifest_hash": "y", "extractor_config": {"n": 1, "m": 3}}
    assert provenance_diff(a, b) == ["extractor_config.m: store has 2, this run has 3"]


def test_read_api_and_verify(tmp_path):
    out = tmp_path / "emb"
    write_provenance(out, {"kind": "embed", "embed_dim": 3, "sample_rate": 32000})
    with ShardWriter(out, shard_size=2) as w:
        w.add("a", np.ones(3, np.float32))
        w.add("b", np.array([1, np.nan, 0], np.float32))
        w.add("c", np.zeros(4, np.float32))
    finalize_store(out)
    store = FeatureStore.open(out)
    assert isinstance(store, FeatureStore) and len(store) == 3 and store.kind == "embed"
    np.testing.assert_array_equal(store["a"], np.ones(3, np.float32))
    assert store.provenance["embed_dim"] == 3
    with pytest.raises(KeyError, match="'zz' is not in feature store"):
        store["zz"]
    rows = [ManifestRow(c, "/x.wav", "development", "synth", 1.0, 32000, ["s"]) for c in ("a", "b", "c", "d")]
    with pytest.raises(StoreError) as e:
        verify_store(store, write_manifest(rows, tmp_path / "m.parquet"))
    msg = str(e.value)
    assert "'b': contains NaN" in msg and "'c': expected float32 [3]" in msg and "'d': missing" in msg
    assert "'a'" not in msg
    with pytest.raises(StoreError, match="feature store not found"):
        FeatureStore.open(tmp_path / "nope")


def test_corrupt_shard_is_reported(tmp_path):
    out = tmp_path / "s"
    write_provenance(out, {"kind": "embed"})
    (out / "shards").mkdir()
    (out / "shards" / "part-bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(StoreError, match="part-bad.safetensors: corrupt shard"):
        finalize_store(out)
