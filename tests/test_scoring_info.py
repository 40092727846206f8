"""``dcase info``: the environment report (versions, device, offline flags, Java, metric resources)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dcase.env import environment_info, format_info, package_versions


def test_environment_info(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = environment_info()
    import torch

    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["python"].count(".") == 2
    assert info["device"]["torch_threads"] == torch.get_num_threads()
    assert info["device"]["cuda_available"] == torch.cuda.is_available()
    assert info["hub_offline"]["offline"] is True
    res = info["metric_resources"]
    assert set(res) == {"ptb_tokenizer", "meteor", "spice", "corenlp_3.6.0", "fense_checker", "sbert"}
    for r in [*res.values(), info["java"]]:
        assert r["present"] == (r["reason"] is None)
    text = format_info(info)
    assert "metric resources:" in text and "corenlp_3.6.0" in text
    assert package_versions(("no-such-dist-xyz",))["no-such-dist-xyz"] is None


def test_info_command_json():
    from dcase.cli import app

    res = CliRunner().invoke(app, ["info", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {"versions", "device", "hub_offline", "java", "metric_resources"} <= set(data)
