"""Model soups: uniform mean, identical-ingredient invariance, compatibility errors, greedy selection, directories."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dcase.checkpoint import load_checkpoint, save_checkpoint
from dcase.merging import (
    SoupError,
    check_compatible,
    greedy_soup,
    soup_checkpoints,
    uniform_soup,
)
from dcase.models.enclap import EnCLAP, EnCLAPConfig, build_enclap


class Tiny(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.lin = nn.Linear(4, hidden)
        self.bn = nn.BatchNorm1d(hidden)  # has an integer buffer (num_batches_tracked)
        self.out = nn.Linear(hidden, 2)


def _sd(seed: int, hidden: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in Tiny(hidden).state_dict().items()}


def _write_tokenizer(folder):
    folder.mkdir()
    (folder / "vocab.txt").write_text("a\nb\n")


def _save_dir(path, sd, config):
    """A checkpoint folder (dcase.checkpoint) of kind "cnext" holding ``sd``, ``config`` and a tokenizer/ folder."""
    return save_checkpoint(sd, path, "cnext", config, {"tokenizer": _write_tokenizer})


def _weights(path):
    return load_checkpoint(path, "cnext")[1]


def test_soup_of_identical_models_is_the_model():
    sd = _sd(0)
    soup = uniform_soup([sd, sd, sd])
    assert soup.keys() == sd.keys()
    for k in sd:
        assert soup[k].dtype == sd[k].dtype
        assert torch.equal(soup[k], sd[k]), k


def test_soup_of_two_is_elementwise_mean():
    a, b = _sd(0), _sd(1)
    soup = uniform_soup([a, b])
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(soup[k], (a[k] + b[k]) / 2, atol=1e-7), k
            assert not torch.equal(soup[k], a[k]) or torch.equal(a[k], b[k])
    assert torch.equal(soup["bn.num_batches_tracked"], a["bn.num_batches_tracked"])


def test_mismatches_are_refused_naming_the_key():
    with pytest.raises(SoupError, match=r"lin\.weight.*shape"):
        uniform_soup([_sd(0), _sd(1, hidden=6)])
    b = _sd(1)
    b["bn.num_batches_tracked"] = torch.tensor(7)
    with pytest.raises(SoupError, match="num_batches_tracked"):
        uniform_soup([_sd(0), b])
    c = _sd(1)
    del c["out.bias"]
    with pytest.raises(SoupError, match="out.bias"):
        uniform_soup([_sd(0), c])
    with pytest.raises(SoupError, match="'model.d_model'"):
        check_compatible([{"model": {"d_model": 64, "layers": 2}}, {"model": {"d_model": 32, "layers": 2}}])
    check_compatible([{"a": 1, "_name_or_path": "x"}, {"a": 1, "_name_or_path": "y"}])  # bookkeeping key ignored


def test_greedy_soup_keeps_only_improving_ingredients():
    # Scalar "models"; validation score = -(w - 1)^2, so averaging towards 1 improves.
    cands = [{"w": torch.tensor([v])} for v in (3.0, 0.5, -4.0, 1.4, 0.9)]

    def score(sd):
        return -float((sd["w"][0] - 1.0) ** 2)

    res = greedy_soup(cands, score)
    # independent replay of the algorithm
    order = sorted(range(5), key=lambda i: -score(cands[i]))  # 4 (0.9), 3 (1.4), 1 (0.5), 0 (3.0), 2 (-4.0)
    chosen, best = [order[0]], score(cands[order[0]])
    for i in order[1:]:
        s = -(((sum(cands[j]["w"][0].item() for j in [*chosen, i]) / (len(chosen) + 1)) - 1.0) ** 2)
        if s > best:
            chosen, best = [*chosen, i], s
    assert res.chosen == chosen and 0 not in res.chosen and 2 not in res.chosen
    assert res.score == pytest.approx(best)
    assert [t["index"] for t in res.trace] == order
    assert [t["kept"] for t in res.trace] == [i in chosen for i in order]
    assert res.state_dict["w"].item() == pytest.approx(sum(cands[j]["w"].item() for j in chosen) / len(chosen))
    # lower-is-better variant picks the worst individual first
    low = greedy_soup(cands, score, greater_is_better=False)
    assert low.chosen[0] == 2


def test_soup_checkpoint_dirs(tmp_path):
    cfg = {"hidden": 8, "_name_or_path": "x"}
    d1 = _save_dir(tmp_path / "c1", _sd(0), cfg)
    d2 = _save_dir(tmp_path / "c2", _sd(1), {**cfg, "_name_or_path": "y"})
    out = soup_checkpoints([d1, d2], tmp_path / "soup")
    config, weights, _ = load_checkpoint(out, "cnext")
    a, b = _sd(0), _sd(1)
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(weights[k], (a[k] + b[k]) / 2)
    assert config == cfg
    assert (out / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "uniform" and run["chosen"] == [0, 1]
    with pytest.raises(FileExistsError):
        soup_checkpoints([d1, d2], out)
    d3 = _save_dir(tmp_path / "c3", _sd(2), {"hidden": 16})
    with pytest.raises(SoupError, match=r"'hidden': 16 vs 8"):
        soup_checkpoints([d1, d3], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_greedy_soup_on_dirs(tmp_path):
    vals = [0.9, 3.0, 1.2]
    dirs = [_save_dir(tmp_path / f"c{i}", {"w": torch.tensor([v])}, {"k": 1}) for i, v in enumerate(vals)]
    calls = []

    def evaluate(model_dir):
        w = _weights(model_dir)
        calls.append(str(model_dir))
        return -float((w["w"][0] - 1.0) ** 2)

    out = soup_checkpoints(dirs, tmp_path / "soup", method="greedy", evaluate_fn=evaluate)
    run = json.loads((out / "run.json").read_text())
    assert run["chosen"] == [0, 2]  # 0.9 first, then 1.2 (mean 1.05 better), 3.0 rejected
    assert _weights(out)["w"].item() == pytest.approx((0.9 + 1.2) / 2)
    assert len(calls) == 3 + 2  # 3 individual scores + 2 trial soups


def test_soup_of_enclap_checkpoints(tmp_path):
    """Works on the captioner's save_pretrained folders (tied weights, tokenizer folder) and loads back."""
    caps = ["a dog barks", "rain falls on a roof", "a car passes by"] * 4
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = build_enclap(EnCLAPConfig.tiny(), captions=caps)
        m.save_pretrained(tmp_path / f"m{seed}")
        models.append(m)
    out = soup_checkpoints([tmp_path / "m0", tmp_path / "m1"], tmp_path / "soup")
    soup = EnCLAP.from_pretrained(out)
    sd0, sd1 = models[0].state_dict(), models[1].state_dict()
    for k, v in soup.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, (sd0[k] + sd1[k]) / 2, atol=1e-6), k


def test_cli_soup(tmp_path):
    from typer.testing import CliRunner

    from dcase.cli import app

    d1 = _save_dir(tmp_path / "c1", _sd(0), {"hidden": 8})
    d2 = _save_dir(tmp_path / "c2", _sd(1), {"hidden": 8})
    runner = CliRunner()
    res = runner.invoke(app, ["soup", str(d1), str(d2), "--out", str(tmp_path / "soup")])
    assert res.exit_code == 0, res.output
    w = _weights(tmp_path / "soup")
    assert torch.allclose(w["out.bias"], (_sd(0)["out.bias"] + _sd(1)["out.bias"]) / 2)
    res = runner.invoke(app, ["soup", str(d1), str(d2), "--out", str(tmp_path / "g"), "--method", "greedy"])
    assert res.exit_code == 2  # greedy without an evaluator is a user error
