"""``dcase caption`` / ``dcase index`` / ``dcase search`` on a tiny system: the CSV is the Task 6 format that
``dcase score captions`` reads, the JSON carries the candidates, the index updates in place and search prints the
ranking of ``Retriever.search``."""

from __future__ import annotations

import csv
import json

import pytest
from _decode_util import one_thread
from _system_util import build_parts, build_system, write_audio
from typer.testing import CliRunner

from dcase.api import Captioner, Retriever
from dcase.cli import app


@pytest.fixture(autouse=True)
def _single_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_use")
    parts = build_parts(root / "parts")
    system = build_system(root, parts)
    audio = root / "audio"
    for i in range(3):
        write_audio(audio / f"clip {i}.wav", 0.6 + 0.3 * i, 44100, channels=2, freq=250.0 * (i + 1), seed=i)
    return {"root": root, "system": system, "audio": audio}


def test_caption_csv_is_scored_by_dcase_score(tiny, tmp_path):
    runner = CliRunner()
    out = tmp_path / "caps.csv"
    res = runner.invoke(app, ["caption", str(tiny["audio"]), "--system", str(tiny["system"]), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file_name", "caption_predicted"]
    expected = Captioner.from_pretrained(tiny["system"]).caption(tiny["audio"])
    assert rows[1:] == [[f"clip {i}.wav", c] for i, c in enumerate(expected)]
    # references: the predictions themselves for clip 0, other words for the rest -> BLEU-1 between 0 and 1
    refs = tmp_path / "refs.csv"
    with open(refs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", *[f"caption_{j}" for j in range(1, 6)]])
        for i, (name, cap) in enumerate(rows[1:]):
            w.writerow([name, *([cap] * 5 if i == 0 else ["zebra quartz xylophone jumps"] * 5)])
    res = runner.invoke(app, ["score", "captions", str(out), "--references", str(refs), "--metrics", "bleu_1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    bleu = json.loads(res.output[res.output.index("{") :])["bleu_1"]
    assert 0.0 < bleu < 1.0
    # an existing output is refused without --overwrite (one-line error, exit 2)
    res = runner.invoke(app, ["caption", str(tiny["audio"]), "--system", str(tiny["system"]), "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output


def test_caption_json_and_stdout(tiny, tmp_path):
    runner = CliRunner()
    one = tiny["audio"] / "clip 1.wav"
    out = tmp_path / "caps.json"
    res = runner.invoke(app, ["caption", str(one), "--system", str(tiny["system"]), "--out", str(out), "--candidates"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    (doc,) = json.loads(out.read_text())
    (ref,) = Captioner.from_pretrained(tiny["system"]).caption(one, return_candidates=True)
    assert doc["file"] == str(one) and doc["caption"] == ref.caption
    assert [c["text"] for c in doc["candidates"]] == [c.text for c in ref.candidates]
    assert doc["candidates"][0]["selected"] is True
    res = runner.invoke(app, ["caption", str(one), "--system", str(tiny["system"])])
    assert res.exit_code == 0
    lines = [line for line in res.stdout.splitlines() if "," in line]
    assert lines[-2:] == ["file_name,caption_predicted", f"clip 1.wav,{ref.caption}"]


def test_caption_user_errors(tiny, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["caption", str(tmp_path / "nope.wav"), "--system", str(tiny["system"])])
    assert res.exit_code == 2 and "nope.wav" in res.output
    res = runner.invoke(app, ["caption", str(tiny["audio"]), "--system", str(tiny["audio"])])
    assert res.exit_code == 2 and "not a system folder" in res.output
    dup = tmp_path / "other"
    write_audio(dup / "clip 0.wav", 0.5, 16000)
    res = runner.invoke(app, ["caption", str(tiny["audio"]), str(dup), "--system", str(tiny["system"])])
    assert res.exit_code == 2 and "same file name" in res.output
    res = runner.invoke(app, ["caption", str(dup), "--system", str(tiny["system"]), "--out", str(tmp_path / "x.txt")])
    assert res.exit_code == 2 and ".csv" in res.output


def test_index_and_search(tiny, tmp_path):
    runner = CliRunner()
    idx = tmp_path / "idx"
    res = runner.invoke(app, ["index", str(tiny["audio"]), "--retriever", str(tiny["system"]), "--out", str(idx)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "3 audio files indexed" in res.output
    res = runner.invoke(app, ["search", "a low tone", "--index", str(idx), "-k", "2", "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    hits = json.loads(res.output[res.output.index("[") :])
    r = Retriever.from_pretrained(tiny["system"])
    r.index(tiny["audio"])
    ref = r.search("a low tone", k=2)
    assert [h["file"] for h in hits] == [h.file for h in ref]
    assert [round(h["score"], 5) for h in hits] == [round(h.score, 5) for h in ref]
    # a new file: the index grows in place
    write_audio(tiny["audio"] / "clip 9.wav", 0.7, 22050, freq=3000.0, seed=9)
    try:
        res = runner.invoke(app, ["index", str(tiny["audio"]), "--retriever", str(tiny["system"]), "--out", str(idx)])
        assert "4 audio files indexed" in res.output
        res = runner.invoke(app, ["search", "a tone", "--index", str(idx)])
        assert res.exit_code == 0 and len([ln for ln in res.output.splitlines() if ".wav" in ln]) == 4
    finally:
        (tiny["audio"] / "clip 9.wav").unlink()
    res = runner.invoke(app, ["search", "x", "--index", str(tmp_path / "none")])
    assert res.exit_code == 2 and "not an audio index" in res.output
