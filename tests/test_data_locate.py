"""The locator on hand-built miniatures of aac-datasets' layouts (0.5 and 0.7), the mixup release's file names and
the hand layouts: what it finds, what it warns about, and the manifests and audio listings built from its entries."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
from _datasets_util import (
    AUDIOCAPS_ROWS,
    MINI_DEV,
    MINI_EVAL,
    MINI_RETRIEVAL,
    MINI_TEST,
    MINI_VAL,
    make_audiocaps,
    make_clotho,
    make_data_root,
    make_mixup,
    make_wavcaps,
    write_corrupt,
    write_csv,
)

from dcase.data.common import DataError
from dcase.data.locate import EXCLUSION_CSV, audio_files, locate_datasets
from dcase.data.manifest import read_manifest
from dcase.data.sources import build_manifest_from
from dcase.errors import InputError

CLOTHO_SPLITS = ("development", "validation", "evaluation", "test", "retrieval_audio")


def _build_all(found, out: Path) -> dict[str, object]:
    return {f.source: read_manifest(build_manifest_from(f, out / f"{f.source}.parquet").out) for f in found}


def test_aac_datasets_layouts_found_and_built(tmp_path: Path) -> None:
    d = make_data_root(tmp_path / "D")
    found = locate_datasets(d)
    assert found.warnings == () and found.problems == ()
    assert [(f.source, f.layout) for f in found] == [
        ("clotho", "aac-datasets"),
        ("audiocaps", "aac-datasets"),
        ("wavcaps", "aac-datasets"),
        ("clotho_mixup", "release"),
    ]
    clotho = found["clotho"]
    assert clotho.root == d / "CLOTHO_v2.1" and clotho.splits == CLOTHO_SPLITS
    assert clotho.audio_dirs["retrieval_audio"] == d / "CLOTHO_v2.1" / "clotho_audio_files" / "test_retrieval_audio"
    assert (
        clotho.files["captions:development"]
        == d / "CLOTHO_v2.1" / "clotho_csv_files" / "clotho_captions_development.csv"
    )
    assert clotho.files["captions:retrieval_audio"].name == "retrieval_captions.csv"
    ac = found["audiocaps"]
    assert ac.splits == ("train", "val", "test") and ac.build_options["csv_dir"] == d / "AUDIOCAPS" / "csv_files_v1"
    assert ac.audio_dirs["val"] == d / "AUDIOCAPS" / "audio_32000Hz" / "val"
    wc = found["wavcaps"]
    assert wc.splits == ("AudioSet_SL", "BBC_Sound_Effects", "SoundBible", "FreeSound")
    assert wc.build_options == {"audio_root": d / "WavCaps" / "Audio", "exclude_csv": d / EXCLUSION_CSV}
    assert wc.files["aac_blacklist_clotho"].name == "blacklist_clotho.full.v2.csv"
    mix = found["clotho-mixup"]  # the CLI spelling works too
    assert mix.files["mixup_json"].name == "clotho_development_chatgpt_mixups.json"
    assert mix.files["rejected_json"].name == "clotho_development_chatgpt_mixups_err.json"
    assert mix.build_options["clotho_root"] == d / "CLOTHO_v2.1"

    m = _build_all(found, tmp_path / "m")
    c = m["clotho"]
    assert c.groupby("split").size().to_dict() == {
        "development": 3,
        "validation": 1,
        "evaluation": 2,
        "test": 1,
        "retrieval_audio": 2,
    }
    assert (c["sample_rate"] == 44100).all()
    a = m["audiocaps"]
    assert a["clip_id"].tolist() == [
        "audiocaps/trainA_30",
        "audiocaps/trainB_0",
        "audiocaps/valA_10",
        "audiocaps/testA_40",
    ]
    assert (a["sample_rate"] == 32000).all() and a["audio_path"].str.endswith(".flac").all()
    assert a.set_index("clip_id").loc["audiocaps/valA_10", "captions"] == [r[3] for r in AUDIOCAPS_ROWS["val"]]
    w = m[
        "wavcaps"
    ]  # FreeSound 77 is listed; SoundBible 77 is another sound; BBC 45 s and SoundBible 0.5 s too long/short
    assert sorted(w["clip_id"]) == [
        "wavcaps/AudioSet_SL/Yb0RFKhbpFJA",
        "wavcaps/BBC_Sound_Effects/07070291",
        "wavcaps/FreeSound/180913",
        "wavcaps/SoundBible/77",
    ]
    assert (w["sample_rate"] == 32000).all()
    x = m["clotho_mixup"]
    assert x["captions"].tolist() == [["mix zero a", "mix zero b"], ["mix one a", "mix one c"]]  # release rejection
    assert x["mix_clip_ids"].tolist() == [MINI_DEV[:2], MINI_DEV[1:]]


def test_hand_layouts_found_and_built(tmp_path: Path) -> None:
    d = make_data_root(tmp_path / "D", layout="hand")
    found = locate_datasets(d)
    assert found.problems == () and found.warnings == ()
    assert {f.source: f.layout for f in found} == {
        "clotho": "hand",
        "audiocaps": "hand",
        "wavcaps": "hand",
        "clotho_mixup": "hand",
    }
    assert found["audiocaps"].build_options["csv_dir"] == d / "AUDIOCAPS" / "dataset"
    assert found["wavcaps"].build_options["audio_root"] == d / "WavCaps" / "audio"
    assert found["clotho_mixup"].files["rejected_json"].name == "rejected.json"
    m = _build_all(found, tmp_path / "m")
    assert len(m["clotho"]) == 9 and len(m["audiocaps"]) == 4 and len(m["wavcaps"]) == 4
    assert m["audiocaps"]["audio_path"].str.endswith(".wav").all()
    assert m["clotho_mixup"]["captions"].tolist()[1] == ["mix one a", "mix one c"]


def test_audiocaps_aac_05_layout(tmp_path: Path) -> None:
    """aac-datasets 0.5 kept the CSVs beside audio_32000Hz/ (and a train_v2.csv that is not a split)."""
    root = make_audiocaps(tmp_path / "D" / "AUDIOCAPS", layout="aac-0.5")
    found = locate_datasets(tmp_path / "D")
    ac = found["audiocaps"]
    assert ac.layout == "aac-datasets" and ac.build_options["csv_dir"] == root and ac.splits == ("train", "val", "test")
    df = read_manifest(build_manifest_from(ac, tmp_path / "a.parquet").out)
    assert len(df) == 4 and (df["sample_rate"] == 32000).all()


def test_absent_datasets_are_warnings(tmp_path: Path) -> None:
    d = tmp_path / "D"
    make_clotho(d / "CLOTHO_v2.1")
    found = locate_datasets(d)
    assert [f.source for f in found] == ["clotho"] and found.problems == ()
    assert found.warnings == (
        f"AudioCaps not found under {d}: looked for {d / 'AUDIOCAPS'}/; left out",
        f"WavCaps not found under {d}: looked for {d / 'WavCaps'}/; left out",
        f"Clotho-ChatGPT-Mixup not found under {d}: looked for {d / 'Clotho-ChatGPT-Mixup'}/; left out",
    )
    assert "wavcaps" not in found and "clotho" in found and found.get("wavcaps") is None
    assert any(line.startswith("warning: WavCaps not found") for line in found.lines())


def test_per_dataset_paths_instead_of_a_root(tmp_path: Path) -> None:
    clotho = make_clotho(tmp_path / "somewhere" / "clotho", layout="hand")
    mix = make_mixup(tmp_path / "elsewhere" / "mix", layout="release")
    wc = make_wavcaps(tmp_path / "wc")
    excl = write_csv(tmp_path / "ids.csv", ["fsd_id"], [["180913"]])
    rej = tmp_path / "my_rejections.json"
    rej.write_text("[]")
    found = locate_datasets(
        paths={
            "clotho": clotho,
            "clotho-mixup": mix / "clotho_development_chatgpt_mixups.json",
            "clotho_mixup_rejected": rej,
            "wavcaps": wc / "json_files",
            "wavcaps_exclusion_csv": excl,
        }
    )
    assert [f.source for f in found] == ["clotho", "wavcaps", "clotho_mixup"] and found.problems == ()
    assert found["wavcaps"].build_options == {"audio_root": wc / "Audio", "exclude_csv": excl}
    assert found["clotho_mixup"].build_options == {"clotho_root": clotho, "rejected_json": rej}
    m = _build_all(found, tmp_path / "m")
    assert "wavcaps/FreeSound/180913" not in set(m["wavcaps"]["clip_id"])
    assert "wavcaps/FreeSound/77" in set(m["wavcaps"]["clip_id"])
    assert m["clotho_mixup"]["captions"].tolist()[1] == ["mix one a", "mix one b", "mix one c"]  # nothing rejected
    # the data root fills in what the paths leave out; paths win
    d = make_data_root(tmp_path / "D")
    both = locate_datasets(d, paths={"clotho": clotho})
    assert both["clotho"].root == clotho and both["audiocaps"].root == d / "AUDIOCAPS"


def test_problems_and_bad_arguments(tmp_path: Path) -> None:
    d = tmp_path / "D"
    make_mixup(d / "Clotho-ChatGPT-Mixup")
    (d / "WavCaps").mkdir()
    make_clotho(d / "CLOTHO_v2.1")
    (d / "CLOTHO_v2.1" / "clotho_csv_files" / "clotho_captions_validation.csv").unlink()
    make_wavcaps(d / "W2")
    found = locate_datasets(d, paths={"audiocaps": d / "nowhere", "wavcaps_exclusion_csv": d / "none.csv"})
    assert [f.source for f in found] == ["clotho", "clotho_mixup"]
    problems = "\n".join(found.problems)
    assert "wavcaps_exclusion_csv: " in problems and "none.csv is not a file" in problems
    assert "Clotho: split 'validation' has audio but no clotho_captions_validation.csv" in problems
    assert f"AudioCaps: {d / 'nowhere'} (given for 'audiocaps') does not exist" in problems
    assert f"WavCaps: {d / 'WavCaps'} has no WavCaps JSON" in problems
    # mixup without Clotho development audio cannot be built
    alone = locate_datasets(paths={"clotho_mixup": d / "Clotho-ChatGPT-Mixup"})
    assert len(alone) == 0 and "no Clotho development audio was found" in alone.problems[0]
    # FreeSound without the DCASE list: a warning that names where the list was looked for
    wc_only = locate_datasets(paths={"wavcaps": d / "W2"})
    assert f"WavCaps: FreeSound JSON present but no DCASE exclusion list ({d / 'W2' / EXCLUSION_CSV} not found)" in (
        "\n".join(wc_only.warnings)
    )
    assert wc_only.warnings[0] == "Clotho v2.1: no path given (and no data root); left out"
    with pytest.raises(InputError, match=r"unknown dataset path key 'clothoo'; expected one of \['clotho'"):
        locate_datasets(d, paths={"clothoo": d})
    with pytest.raises(InputError, match="no data location"):
        locate_datasets()
    with pytest.raises(InputError, match="is not a folder"):
        locate_datasets(d / "missing")


def test_audio_files_lists_what_the_manifests_use_without_decoding(tmp_path: Path) -> None:
    d = make_data_root(tmp_path / "D")
    found = locate_datasets(d)
    listing = {f.source: audio_files(f) for f in found}
    c = listing["clotho"]
    assert {s: sorted(p.name for p in ps) for s, ps in c.items()} == {
        "development": sorted(MINI_DEV),
        "validation": MINI_VAL,
        "evaluation": sorted(MINI_EVAL),
        "test": MINI_TEST,
        "retrieval_audio": sorted(MINI_RETRIEVAL),
    }
    manifests = _build_all(found, tmp_path / "m")
    for source, by_split in listing.items():
        df = manifests[source]
        for split, paths in by_split.items():
            if source == "clotho_mixup":
                used = {p for pair in df["mix_audio_paths"] for p in pair}
            else:
                used = set(df.loc[df["split"] == split, "audio_path"])
            assert {str(p.absolute()) for p in paths} == used, (source, split)
    assert "wavcaps/FreeSound/77" not in set(manifests["wavcaps"]["clip_id"])
    assert all(p.name != "77.flac" or "SoundBible" in str(p) for p in listing["wavcaps"]["train"])
    # a policy option changes the listing like the build
    every_fsd = audio_files(found["wavcaps"], freesound_policy="all")["train"]
    assert not any("FreeSound" in str(p) for p in every_fsd)
    # nothing is decoded: a corrupt file is still listed (the build is what refuses it)
    victim = found["clotho"].audio_dirs["evaluation"] / MINI_EVAL[0]
    write_corrupt(victim)
    assert victim in audio_files(found["clotho"])["evaluation"]
    with pytest.raises(DataError, match="unreadable audio"):
        build_manifest_from(found["clotho"], tmp_path / "again.parquet")
    assert sf.info(str(found["clotho"].audio_dirs["development"] / MINI_DEV[0])).samplerate == 44100


def test_cli_locate(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dcase.cli import app

    d = make_data_root(tmp_path / "D")
    r = CliRunner().invoke(app, ["data", "locate", "--data-root", str(d)], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    assert f"Clotho v2.1: {d / 'CLOTHO_v2.1'} (aac-datasets layout; {', '.join(CLOTHO_SPLITS)})" in r.output
    assert f"Clotho-ChatGPT-Mixup: {d / 'Clotho-ChatGPT-Mixup'} (release layout; train)" in r.output
    (d / "CLOTHO_v2.1" / "clotho_csv_files" / "clotho_captions_evaluation.csv").unlink()
    r = CliRunner().invoke(app, ["data", "locate", "--data-root", str(d), "--path", f"audiocaps={d / 'x'}"])
    assert r.exit_code == 2 and "problem: Clotho: split 'evaluation' has audio but no" in r.output
    assert "does not exist" in r.output
    r = CliRunner().invoke(app, ["data", "locate", "--path", "audiocaps"])
    assert r.exit_code == 2 and "--path expects KEY=PATH" in r.output


def test_found_datasets_serialise_and_pickle(tmp_path: Path) -> None:
    import json
    import pickle

    d = make_data_root(tmp_path / "D")
    found = locate_datasets(d)
    record = json.loads(json.dumps(found.to_dict()))
    assert record["data_root"] == str(d) and list(record["datasets"]) == [
        "clotho",
        "audiocaps",
        "wavcaps",
        "clotho_mixup",
    ]
    assert record["datasets"]["audiocaps"]["build_options"] == {
        "csv_dir": str(d / "AUDIOCAPS" / "csv_files_v1"),
        "splits": ["train", "val", "test"],
    }
    assert pickle.loads(pickle.dumps(found)) == found
