"""Shareable checkpoints: the generated model card (front matter, data, scores, licences from the records), the
upload folder, round trips through a local Hub cache by repository id, and ``dcase push`` failing clearly offline.
Nothing here touches the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _decode_util import one_thread, tiny_captioner
from _system_util import build_parts, build_system, hub_cache
from typer.testing import CliRunner

from dcase.hub import HubError, front_matter, model_card, prepare_upload, push


@pytest.fixture(autouse=True)
def _single_thread():
    yield from one_thread()


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A captioner training run as dcase.training leaves it: checkpoints/, best.json, train_log.jsonl, config.yaml
    naming a manifest of Clotho and AudioCaps rows."""
    import yaml

    from dcase.data.manifest import ManifestRow, write_manifest

    run = tmp_path / "enclap_ft"
    ckpt = run / "checkpoints" / "step-000004"
    tiny_captioner(seed=3).save_pretrained(ckpt)
    rows = [
        ManifestRow(f"c{i}.wav", f"/a/c{i}.wav", "development", src, 1.0, 44100, captions=["a cat"])
        for i, src in enumerate(["clotho", "audiocaps"])
    ]
    write_manifest(rows, tmp_path / "m.parquet")
    (run / "config.yaml").write_text(
        yaml.safe_dump({"data": {"train_manifests": [str(tmp_path / "m.parquet")], "train_splits": ["development"]}})
    )
    (run / "train_log.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"step": 2, "lr": 1e-4, "loss": 3.0},
                {"step": 2, "eval/cider_d": 0.11, "eval/meteor": 0.05},
                {"step": 4, "eval/cider_d": 0.25, "eval/meteor": 0.09},
            ]
        )
        + "\n"
    )
    (run / "best.json").write_text(
        json.dumps({"metric": "cider_d", "checkpoints": [{"value": 0.25, "step": 4, "path": str(ckpt)}]})
    )
    return run


def test_card_of_a_training_run(run_dir):
    card = model_card(run_dir, "someone/enclap-tiny")
    meta = front_matter(card)
    assert meta["license"] == "mit"  # random initialisation, trained here: this toolkit's licence
    assert meta["datasets"] == ["AudioCaps", "Clotho v2.1"] and meta["library_name"] == "dcase"
    assert "audio-captioning" in meta["tags"] and "enclap" in meta["tags"]
    assert "| best cider_d (update 4) | 0.2500 |" in card
    assert "| validation meteor (update 4) | 0.0900 |" in card
    assert "manifest: m.parquet (splits development)" in card
    assert 'EnCLAP.from_pretrained("someone/enclap-tiny")' in card
    assert "d_model: 32" in card  # the model config


def test_card_scores_of_a_resumed_run_and_of_an_unreadable_log(run_dir):
    """The last evaluated update of the log (a resumed run logs an update again: its last record wins); a log cut
    off mid-line leaves the validation scores out, not the card."""
    log_file = run_dir / "train_log.jsonl"
    log_file.write_text(log_file.read_text() + json.dumps({"step": 4, "eval/cider_d": 0.3, "eval/meteor": 0.1}) + "\n")
    card = model_card(run_dir, "someone/enclap-tiny")
    assert "| validation meteor (update 4) | 0.1000 |" in card and "| validation cider_d (update 4) | 0.3000 |" in card
    log_file.write_text(log_file.read_text() + '{"step": 5, "eval/cid')
    card = model_card(run_dir, "someone/enclap-tiny")
    assert "| best cider_d (update 4) | 0.2500 |" in card and "| validation" not in card


def test_card_licence_of_a_pretrained_text_encoder(tmp_path):
    from dcase.models.cnext import CNextConfig
    from dcase.models.retriever import Retriever, RetrieverConfig, TextTowerConfig

    torch.manual_seed(0)
    ret = Retriever.build(
        RetrieverConfig(
            audio=CNextConfig.tiny(),
            text=TextTowerConfig(name_or_path="sentence-transformers/all-MiniLM-L6-v2"),
            joint_dim=8,
            loss="infonce",
        )
    )
    ret.save_pretrained(tmp_path / "ret")
    card = model_card(tmp_path / "ret")
    # the packaged all-MiniLM-L6-v2 declares apache-2.0 in its own card; the audio tower was trained from scratch
    assert "| text encoder | sentence-transformers/all-MiniLM-L6-v2 | apache-2.0 |" in card
    assert "| audio tower (CNext) | random initialisation, trained with dcase | mit |" in card
    assert front_matter(card)["license"] == "other"  # two licences: the table says which part has which
    assert "No scores recorded" in card and "audio-retrieval" in front_matter(card)["tags"]


def test_upload_folder_round_trips_through_the_hub_cache(run_dir, tmp_path, monkeypatch):
    from dcase.curves import plot_curves
    from dcase.models.enclap import EnCLAP

    plot_curves(run_dir)
    staged = prepare_upload(run_dir, tmp_path / "upload", "someone/enclap-tiny")
    names = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert {"README.md", "config.json", "model.safetensors", "curves.png"} <= set(names)
    assert any(n.startswith("tokenizer/") for n in names)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_cache(tmp_path / "hub", "someone/enclap-tiny", staged)
    loaded = EnCLAP.from_pretrained("someone/enclap-tiny")
    orig = EnCLAP.from_pretrained(run_dir)  # the run's best checkpoint
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), orig.state_dict().values(), strict=True))


def test_system_card_and_round_trip(tmp_path, monkeypatch):
    from dcase.api import Captioner

    system = build_system(tmp_path, build_parts(tmp_path / "parts"))
    card = model_card(system, "someone/tiny-system")
    assert "Task 6 audio-captioning system" in card and 'Captioner.from_pretrained("someone/tiny-system")' in card
    assert card.count("retriever (retriever)") == 1  # the retriever is also the clip embedder: described once
    assert "| codec: DAC codec | not recorded in the system folder | unknown" in card
    assert front_matter(card)["license"] == "other"
    assert "num_candidates: 6" in card  # the generation settings
    staged = prepare_upload(system, tmp_path / "upload", "someone/tiny-system")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_cache(tmp_path / "hub", "someone/tiny-system", staged)
    assert Captioner.from_pretrained("someone/tiny-system").settings == Captioner.from_pretrained(system).settings


def test_push_offline_fails_clearly(run_dir, monkeypatch):
    from dcase.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        push(run_dir, "someone/enclap-tiny")
    res = CliRunner().invoke(app, ["push", str(run_dir), "someone/enclap-tiny"])
    assert res.exit_code == 2 and "HF_HUB_OFFLINE" in res.output
    with pytest.raises(ValueError, match="owner/name"):
        push(run_dir, "no-owner")


def test_push_unreachable_hub_fails_clearly(run_dir, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubError, match="could not upload to someone/enclap-tiny at http://127.0.0.1:9"):
        push(run_dir, "someone/enclap-tiny", token="hf_x", endpoint="http://127.0.0.1:9")


def test_push_uploads_the_staged_folder(run_dir, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, endpoint=None, token=None):
            calls.append(("init", endpoint, token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            files = sorted(p.name for p in Path(folder_path).iterdir())
            calls.append(("upload", repo_id, files, front_matter((Path(folder_path) / "README.md").read_text())))
            return "https://hub.example/someone/enclap-tiny/commit/1"

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = push(run_dir, "someone/enclap-tiny", private=True, token="hf_x")
    assert url.endswith("/commit/1")
    assert calls[1] == ("create", "someone/enclap-tiny", True, True)
    kind, repo, files, meta = calls[2]
    assert repo == "someone/enclap-tiny" and {"README.md", "config.json", "model.safetensors"} <= set(files)
    assert meta["license"] == "mit"


def test_cli_push_out_writes_the_folder(run_dir, tmp_path):
    from dcase.cli import app

    res = CliRunner().invoke(app, ["push", str(run_dir), "someone/x", "--out", str(tmp_path / "up")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert front_matter((tmp_path / "up" / "README.md").read_text())["license"] == "mit"
