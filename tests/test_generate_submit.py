"""``dcase submit task6`` end to end on tiny models (tiny DAC, tiny retriever, a captioner + a soup, token
ensemble), and the shipped Task 6 recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from _decode_util import one_thread, tiny_captioner, write_tone
from typer.testing import CliRunner

from dcase.checkpoint import kind_of
from dcase.stages.generation import task6_rows
from dcase.submission.formats import validate_task6
from dcase.submission.meta import build_meta, placeholder_fields, read_meta
from dcase.submission.recipes import load_task6_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _single_thread():
    yield from one_thread()


def test_shipped_recipes_mirror_the_report():
    # (captioners, of which soups) per system, report §3.3; soups are the pipeline's soups/<name> (profile dcase2024)
    want = {1: (1, 0), 2: (1, 1), 3: (7, 0), 4: (9, 2)}
    for n, (n_cap, n_soup) in want.items():
        r = load_task6_recipe(REPO / "submissions" / f"task6_{n}.yaml")
        assert (len(r.captioners), sum(c.startswith("soups/") for c in r.captioners)) == (n_cap, n_soup)
        assert r.clip_embedder == r.retriever == "retrievers/bge-base/pretrain" and r.codec == "codec"
        g = r.generation
        assert (g.sampling.top_p, g.sampling.temperature, g.sampling.num_candidates) == (0.95, 0.5, 30)
        assert (g.w_enc, g.w_dec) == (0.7, 0.3)
        assert build_meta(r.meta, 6)["submission"]["label"] == f"Lastname_Institute_task6_{n}"
        assert {"lastname", "institute"} <= set(placeholder_fields(r.meta))
    from dcase.stages.profiles import load_profile

    soups = {s.name: s.seeds for s in load_profile("dcase2024").soups}
    assert soups == {"soup_a": [0, 1, 2, 3, 4], "soup_b": [2, 3, 4, 5, 6]}


def test_cli_submit_task6_end_to_end(tmp_path):
    from _retriever_util import build_tiny_bert

    from dcase.cli import app
    from dcase.models.cnext import CNextConfig
    from dcase.models.retriever import Retriever, RetrieverConfig, TextTowerConfig

    audio = tmp_path / "eval_audio"
    audio.mkdir()
    for i, f in enumerate((220.0, 440.0, 880.0)):
        write_tone(audio / f"clip {i}.wav", f, seconds=0.4)
    root = tmp_path / "ckpts"
    torch.manual_seed(0)
    ret = Retriever.build(
        RetrieverConfig(
            audio=CNextConfig.tiny(),
            joint_dim=8,
            loss="infonce",
            text=TextTowerConfig(name_or_path=str(build_tiny_bert(tmp_path / "bert", 16, 1))),
        )
    )
    ret.save_pretrained(root / "retrievers" / "r")
    for s in (0, 1):  # tiny DAC: 4 codebooks of 64 codes
        tiny_captioner(seed=s, eos_bias=-1.0, clip_dim=8, codebook_size=64).save_pretrained(root / "enclap" / f"s{s}")
    recipe = yaml.safe_load((REPO / "submissions" / "task6_1.yaml").read_text())
    recipe.update(
        root=str(root),
        captioners=["enclap/s0", "soup2"],
        retriever="retrievers/r",
        clip_embedder="retrievers/r",
        codec="tiny",
        soups=[{"name": "soup2", "ingredients": ["enclap/s0", "enclap/s1"], "method": "uniform"}],
    )
    recipe["generation"].update(ensemble="token", fluency_checker=None, chunk_clips=2)
    recipe["generation"]["sampling"].update(num_candidates=4, max_new_tokens=8, batch_clips=2)
    rpath = tmp_path / "recipe.yaml"
    rpath.write_text(yaml.safe_dump(recipe))
    out, meta = tmp_path / "t6.csv", tmp_path / "t6.meta.yaml"
    args = [
        "submit",
        "task6",
        "--recipe",
        str(rpath),
        "--audio-dir",
        str(audio),
        "--out",
        str(out),
        "--meta-out",
        str(meta),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "placeholders" in res.output
    df = validate_task6(out, audio)
    assert sorted(df["file_name"]) == ["clip 0.wav", "clip 1.wav", "clip 2.wav"]
    assert dict(task6_rows(tmp_path / "work" / "candidates.parquet")) == dict(
        zip(df["file_name"], df["caption_predicted"], strict=True)
    )
    assert kind_of(tmp_path / "work" / "soups" / "soup2") == "enclap"
    assert read_meta(meta)["submission"]["label"] == "Lastname_Institute_task6_1"
    res = CliRunner().invoke(app, args)  # no silent overwrite
    assert res.exit_code == 2 and "exists" in res.output
    recipe["captioners"] = ["enclap/missing"]
    rpath.write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, [*args[:-4], "--out", str(tmp_path / "x.csv"), "--work-dir", str(tmp_path / "work")])
    assert res.exit_code == 2 and "enclap/missing" in res.output


def test_recipe_errors_are_clear(tmp_path):
    from dcase.config import ConfigError

    p = tmp_path / "r.yaml"
    p.write_text("captioners: [a]\ngeneration: {sampling: {top_q: 3}}\n")  # an unknown key
    with pytest.raises(ConfigError, match="top_q"):
        load_task6_recipe(p)
