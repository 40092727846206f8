"""The Protocols that stand for "anything with these methods" hold for the real classes, and the code that branches
on them takes the right branch (a store's index vs reading the array; provenance only where a store records one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dcase.features.store import (
    FeatureStore,
    RecordedStore,
    ShapedStore,
    ShardWriter,
    StoreChain,
    array_shape,
    finalize_store,
    store_sizes,
    write_provenance,
)


def _store(path: Path, kind: str, arrays: dict[str, np.ndarray], **prov: object) -> FeatureStore:
    write_provenance(path, {"kind": kind, "sample_rate": 24000, **prov})
    with ShardWriter(path, shard_size=8) as w:
        for k, v in arrays.items():
            w.add(k, v)
    finalize_store(path)
    return FeatureStore.open(path)


def test_feature_stores_and_chains_satisfy_the_store_protocols(tmp_path: Path) -> None:
    codes = {"a": np.zeros((4, 7), np.int16), "b": np.ones((4, 3), np.int16)}
    store = _store(tmp_path / "dac", "codec", codes, n_codebooks=4, extractor_config={"codebook_size": 16})
    chain = StoreChain([store, {"c": np.zeros((4, 5), np.int16)}])
    assert isinstance(store, ShapedStore) and isinstance(store, RecordedStore)
    assert isinstance(chain, ShapedStore) and not isinstance(chain, RecordedStore)
    assert not isinstance({"a": codes["a"]}, ShapedStore | RecordedStore)
    # shapes from the index, from a plain dict inside the chain, and from a plain dict: all as np.shape says
    for mapping, key in ((store, "a"), (chain, "b"), (chain, "c"), (codes, "b")):
        assert array_shape(mapping, key) == np.shape(mapping[key])
    # sizes come from the recorded provenance only; a plain mapping records none
    assert store_sizes(chain) == {"n_codebooks": 4, "codebook_size": 16}
    assert store_sizes(codes) == {}


def test_store_sizes_names_disagreeing_stores(tmp_path: Path) -> None:
    from dcase.features.store import StoreError

    a = _store(tmp_path / "a", "embed", {"x": np.zeros(3, np.float32)}, embed_dim=3)
    b = _store(tmp_path / "b", "embed", {"y": np.zeros(5, np.float32)}, embed_dim=5)
    with pytest.raises(StoreError, match="disagree") as e:
        store_sizes(StoreChain([a, b]))
    assert str(tmp_path / "a") in str(e.value) and str(tmp_path / "b") in str(e.value)


def test_models_satisfy_the_embedder_protocols() -> None:
    from dcase.features.embed import AudioEmbedder, ConfiguredModel, embed_waves
    from dcase.models.cnext import CNext, CNextConfig

    model = CNext(CNextConfig.tiny()).eval()
    assert isinstance(model, AudioEmbedder) and isinstance(model, ConfiguredModel)

    class Fake:  # an embedder that is no torch module: runs on the CPU, has no config
        sample_rate, embed_dim = 16000, 2

        def embed_audio(self, waves, lengths):
            return torch.stack([waves.sum(1), lengths.float()], 1)

    fake = Fake()
    assert isinstance(fake, AudioEmbedder) and not isinstance(fake, ConfiguredModel)
    out = embed_waves(fake, [np.ones(3, np.float32), np.full(5, 2.0, np.float32)])
    np.testing.assert_allclose(np.stack(out), [[3.0, 3.0], [10.0, 5.0]])
