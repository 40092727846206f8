"""dcase.checkpoint (one format for EnCLAP, the retriever and CNext) and the atomic folder / fingerprint helpers."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from dcase import __version__
from dcase.checkpoint import kind_of, load_checkpoint, resolve_checkpoint, save_checkpoint
from dcase.errors import CheckpointError, MissingInputError
from dcase.io import atomic_dir, fingerprint, sha256_dir
from dcase.models.cnext import CNext, CNextConfig
from dcase.models.enclap import EnCLAP, EnCLAPConfig, build_enclap
from dcase.models.retriever import Retriever, RetrieverConfig

CAPS = ["a dog barks", "rain falls on a roof", "a car passes by"] * 4


def _cnext(seed: int = 0) -> CNext:
    torch.manual_seed(seed)
    return CNext(CNextConfig.tiny()).eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _to_legacy(folder: Path, kind: str, extra: dict | None = None) -> None:
    """Rewrite a checkpoint as the code before format 1 wrote it: ``<kind>_config.json`` = the config itself."""
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / f"{kind}_config.json").write_text(json.dumps({**data["config"], **(extra or {})}))


def test_cnext_round_trip_and_config_layout(tmp_path: Path) -> None:
    model = _cnext()
    path = model.save_pretrained(tmp_path / "c")
    data = json.loads((path / "config.json").read_text())
    assert data == {
        "dcase_kind": "cnext",
        "format_version": 1,
        "dcase_version": __version__,
        "config": asdict(model.config),
    }
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert kind_of(path) == "cnext"
    back = CNext.from_pretrained(path)
    assert back.config == model.config and _same_weights(back, model)
    config, state, folder = load_checkpoint(path, "cnext")
    assert config == asdict(model.config) and folder == path and state.keys() == model.state_dict().keys()


def test_every_model_round_trips_through_one_format(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = build_enclap(EnCLAPConfig.tiny(), captions=CAPS)
    enc.save_pretrained(tmp_path / "e")
    torch.manual_seed(0)
    ret = Retriever.build(RetrieverConfig.tiny())
    ret.save_pretrained(tmp_path / "r")
    assert [kind_of(tmp_path / k) for k in "er"] == ["enclap", "retriever"]
    assert (tmp_path / "e" / "tokenizer").is_dir() and (tmp_path / "r" / "text" / "config.json").is_file()
    assert _same_weights(EnCLAP.from_pretrained(tmp_path / "e"), enc)
    back = Retriever.from_pretrained(tmp_path / "r")
    assert _same_weights(back, ret) and back.config == ret.config
    assert back.config.text.pooling == "mean"  # resolved at build time and recorded


def test_wrong_kind_and_missing_config_are_clear_errors(tmp_path: Path) -> None:
    _cnext().save_pretrained(tmp_path / "c")
    with pytest.raises(CheckpointError, match=r"is a CNext checkpoint, not an EnCLAP checkpoint"):
        EnCLAP.from_pretrained(tmp_path / "c")
    with pytest.raises(CheckpointError, match=r"is a CNext checkpoint, not a retriever checkpoint"):
        Retriever.from_pretrained(tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"not a dcase checkpoint; a checkpoint folder holds config.json"):
        CNext.from_pretrained(tmp_path / "empty")
    assert kind_of(tmp_path / "empty") is None and kind_of(tmp_path / "nope") is None
    with pytest.raises(MissingInputError, match="does not exist"):
        CNext.from_pretrained(tmp_path / "nope" / "deeper" / "c")
    (tmp_path / "c" / "config.json").write_text(json.dumps({"dcase_kind": "cnext", "format_version": 7, "config": {}}))
    with pytest.raises(CheckpointError, match="format_version 7"):
        CNext.from_pretrained(tmp_path / "c")


def test_legacy_checkpoints_still_load(tmp_path: Path) -> None:
    model = _cnext()
    model.save_pretrained(tmp_path / "c")
    _to_legacy(tmp_path / "c", "cnext")
    assert kind_of(tmp_path / "c") == "cnext" and _same_weights(CNext.from_pretrained(tmp_path / "c"), model)
    torch.manual_seed(1)
    enc = build_enclap(EnCLAPConfig.tiny(), captions=CAPS)
    enc.save_pretrained(tmp_path / "e")
    _to_legacy(tmp_path / "e", "enclap")  # {"enclap": ..., "bart": ...} as before
    assert kind_of(tmp_path / "e") == "enclap" and _same_weights(EnCLAP.from_pretrained(tmp_path / "e"), enc)
    torch.manual_seed(2)
    ret = Retriever.build(RetrieverConfig.tiny())
    ret.save_pretrained(tmp_path / "r")
    _to_legacy(tmp_path / "r", "retriever", {"text_source": "tiny-bert"})
    assert kind_of(tmp_path / "r") == "retriever" and _same_weights(Retriever.from_pretrained(tmp_path / "r"), ret)


def test_training_run_folder_resolves_to_its_best_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    good, other = _cnext(0), _cnext(1)
    good.save_pretrained(run / "checkpoints" / "step-000020")
    other.save_pretrained(run / "checkpoints" / "step-000010")
    best = [{"value": 0.9, "step": 20, "path": "elsewhere/run/checkpoints/step-000020"}, {"value": 0.5, "step": 10}]
    (run / "best.json").write_text(json.dumps({"metric": "map_at_10", "checkpoints": best}))
    assert kind_of(run) == "cnext"  # the recorded path moved: found under run/checkpoints by name
    assert _same_weights(CNext.from_pretrained(run), good)
    best[0]["path"] = str(run / "checkpoints" / "step-000010")
    (run / "best.json").write_text(json.dumps({"checkpoints": best}))
    assert _same_weights(CNext.from_pretrained(run), other)


def test_hub_repository_from_the_local_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-cnext" / "snapshots" / "0123abcd"
    model = _cnext(3)
    model.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # "someone/tiny-cnext" is not a local folder here
    assert _same_weights(CNext.from_pretrained("someone/tiny-cnext"), model)
    with pytest.raises(MissingInputError, match=r"'someone/absent'.*local Hugging Face cache"):
        CNext.from_pretrained("someone/absent")


def test_atomic_dir_replaces_only_complete_folders(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "1"  # the old folder survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left behind
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    with pytest.raises(FileExistsError), atomic_dir(target, overwrite=False) as tmp:
        (tmp / "c.txt").write_text("4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    model = _cnext(0)
    path = model.save_pretrained(tmp_path / "c")

    def broken(folder: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_cnext(1), path, "cnext", CNextConfig.tiny(), {"extra": broken})
    assert _same_weights(CNext.from_pretrained(path), model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_one_fingerprint(tmp_path: Path) -> None:
    a, b = _cnext(0), _cnext(1)
    a.save_pretrained(tmp_path / "a")
    assert fingerprint(tmp_path / "a") == sha256_dir(tmp_path / "a", "*.safetensors")  # store provenance value
    assert fingerprint(a) == fingerprint(_cnext(0)) != fingerprint(b)
    b.save_pretrained(tmp_path / "b")
    assert fingerprint(tmp_path / "a") != fingerprint(tmp_path / "b")
    assert fingerprint(tmp_path / "a" / "model.safetensors") != fingerprint(tmp_path / "a")  # a file: its sha256


def test_pipeline_and_checkpoint_loading_resolve_a_run_folder_alike(tmp_path: Path) -> None:
    """RunLayout.resolve (the pipeline) and resolve_checkpoint (from_pretrained) read best.json the same way."""
    from dcase.stages.pipeline import RunLayout

    layout = RunLayout(tmp_path / "root")
    run = layout.captioner_finetune(0)
    (run / "checkpoints" / "step-000010").mkdir(parents=True)
    (run / "checkpoints" / "step-000020").mkdir()
    (run / "last").mkdir()

    def both() -> Path:
        via_pipeline, via_loader = layout.resolve("captioner/finetune/seed0"), resolve_checkpoint(run)
        assert via_pipeline == via_loader
        return via_loader

    entries = [{"value": 0.9, "step": 20, "path": str(run / "checkpoints" / "step-000020")}]
    entries.append({"value": 0.5, "step": 10, "path": str(run / "checkpoints" / "step-000010")})
    (run / "best.json").write_text(json.dumps({"checkpoints": entries}))
    assert both() == run / "checkpoints" / "step-000020"
    entries[0]["path"] = "/moved/away/run/checkpoints/step-000020"  # a moved run: found by name under checkpoints/
    (run / "best.json").write_text(json.dumps({"checkpoints": entries}))
    assert both() == run / "checkpoints" / "step-000020"
    shutil.rmtree(run / "checkpoints" / "step-000020")  # the best entry is missing: the next one
    assert both() == run / "checkpoints" / "step-000010"
    (run / "best.json").write_text(json.dumps({"checkpoints": []}))  # no entry: last/
    assert both() == run / "last"
    (run / "best.json").unlink()
    assert both() == run / "last"
    shutil.rmtree(run / "last")
    (run / "best.json").write_text(json.dumps({"checkpoints": [{"path": "/gone/step-000030"}]}))
    with pytest.raises(MissingInputError, match="without a finished checkpoint"):
        layout.resolve("captioner/finetune/seed0")
    with pytest.raises(MissingInputError, match="without a finished checkpoint"):
        resolve_checkpoint(run)
