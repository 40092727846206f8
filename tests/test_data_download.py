"""`dcase data download` with aac-datasets' download functions (and the two direct downloads) replaced: the
arguments they receive, the folders the result lands in, and the errors without the extra or offline."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
from _datasets_util import make_audiocaps, make_clotho, make_mixup, make_wavcaps, write_csv
from typer.testing import CliRunner

from dcase.cli import app
from dcase.data import download as dl

runner = CliRunner()


class FakeAac:
    """Stands in for aac-datasets: records each call and writes the miniature of its layout under ``root``."""

    def __init__(self, fail: dict[str, BaseException] | None = None) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        self.fail = fail or {}

    def _fn(self, name: str, make) -> Any:
        def download(**kwargs: Any) -> None:
            self.calls[name] = kwargs
            if name in self.fail:
                raise self.fail[name]
            make(Path(kwargs["root"]))

        return download

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        parts = {
            "clotho": ("download_clotho_datasets", lambda r: make_clotho(r / "CLOTHO_v2.1")),
            "audiocaps": ("download_audiocaps_datasets", lambda r: make_audiocaps(r / "AUDIOCAPS")),
            "wavcaps": ("download_wavcaps_datasets", lambda r: make_wavcaps(r / "WavCaps")),
        }
        for pkg in ("aac_datasets", "aac_datasets.datasets", "aac_datasets.datasets.functional"):
            monkeypatch.setitem(sys.modules, pkg, types.ModuleType(pkg))
        for name, (fn_name, make) in parts.items():
            mod = types.ModuleType(f"aac_datasets.datasets.functional.{name}")
            setattr(mod, fn_name, self._fn(name, make))
            monkeypatch.setitem(sys.modules, mod.__name__, mod)


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the two direct downloads (URL, Hugging Face snapshot) by local writers; record their arguments."""
    seen: dict[str, Any] = {}

    def fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
        seen["url"] = (url, dest)
        write_csv(dest, ["sound_id"], [["77"]])

    def snapshot(repo_id: str, local_dir: Path) -> None:
        seen["hf"] = (repo_id, local_dir)
        make_mixup(local_dir)

    monkeypatch.setattr(dl, "_fetch_url", fetch)
    monkeypatch.setattr(dl, "_hf_snapshot", snapshot)
    return seen


def test_download_passes_arguments_and_fills_the_data_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: dict[str, Any]
) -> None:
    fake = FakeAac()
    fake.install(monkeypatch)
    d = tmp_path / "D"
    r = runner.invoke(app, ["data", "download", "--data-root", str(d), "--workers", "4"], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    assert fake.calls["clotho"] == {
        "root": str(d),
        "subsets": list(dl.CLOTHO_SUBSETS),
        "force": False,
        "verbose": 1,
        "version": "v2.1",
    }
    assert fake.calls["audiocaps"] == {
        "root": str(d),
        "subsets": ["train", "val", "test"],
        "force": False,
        "verbose": 1,
        "audio_format": "flac",
        "sr": 32000,
        "max_workers": 4,
    }
    assert fake.calls["wavcaps"] == {
        "root": str(d),
        "subsets": ["audioset", "bbc", "soundbible", "freesound_no_clotho_v2"],
        "force": False,
        "verbose": 1,
    }
    assert direct["url"] == (dl.EXCLUSION_CSV_URL, d / "dcase2024_task6_excluded_freesound_ids.csv")
    assert direct["hf"] == ("slseanwu/clotho-chatgpt-mixup-50K", d / "Clotho-ChatGPT-Mixup")
    for folder in ("CLOTHO_v2.1", "AUDIOCAPS", "WavCaps", "Clotho-ChatGPT-Mixup"):
        assert f"{d / folder}" in r.output
    # the command ends by locating what it downloaded
    assert f"Clotho v2.1: {d / 'CLOTHO_v2.1'} (aac-datasets layout;" in r.output
    assert f"WavCaps: {d / 'WavCaps'} (aac-datasets layout;" in r.output
    assert f"Clotho-ChatGPT-Mixup: {d / 'Clotho-ChatGPT-Mixup'} (release layout; train)" in r.output
    assert "warning" not in r.output and "problem" not in r.output


def test_selected_datasets_and_subsets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: dict) -> None:
    fake = FakeAac()
    fake.install(monkeypatch)
    d = tmp_path / "D"
    args = ["data", "download", "--data-root", str(d), "--datasets", "wavcaps,clotho-mixup", "--force"]
    r = runner.invoke(app, [*args, "--wavcaps-subsets", "audioset,bbc", "--wavcaps-subsets", "soundbible"])
    assert r.exit_code == 0, r.output
    assert set(fake.calls) == {"wavcaps"} and "url" not in direct and "hf" in direct
    assert fake.calls["wavcaps"]["subsets"] == ["audioset", "bbc", "soundbible"] and fake.calls["wavcaps"]["force"]
    r = runner.invoke(app, ["data", "download", "--data-root", str(d), "--datasets", "clothov2"])
    assert r.exit_code == 2 and "unknown dataset 'clothov2' to download" in r.output


def test_without_the_extra_says_what_to_download_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: dict
) -> None:
    monkeypatch.setitem(sys.modules, "aac_datasets", None)  # import fails as if not installed
    d = tmp_path / "D"
    r = runner.invoke(app, ["data", "download", "--data-root", str(d)], env={"COLUMNS": "300"})
    assert r.exit_code == 2
    out = " ".join(r.output.split())
    assert "could not download ['clotho', 'audiocaps', 'wavcaps']" in out
    assert "pip install 'dcase[download]' (aac-datasets==0.7.0)" in out
    for expected in (
        f"{d}/CLOTHO_v2.1/: Clotho v2.1 from https://zenodo.org/records/4783391",
        "clotho_audio_files/<split>/",
        f"{d}/AUDIOCAPS/: the captions train.csv",
        "audio_32000Hz/<split>/{youtube_id}_{start_time}.flac",
        f"{d}/WavCaps/: json_files/ and the zipped audio of https://huggingface.co/datasets/cvssp/WavCaps",
        "downloaded: clotho_mixup: ",
    ):
        assert expected in out, expected
    assert "Clotho-ChatGPT-Mixup/:" not in out  # it did download


def test_offline_and_torchaudio_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeAac(fail={"clotho": ConnectionError("network is unreachable"), "audiocaps": RuntimeError("no ffmpeg")})
    fake.install(monkeypatch)

    def offline(*args: Any, **kwargs: Any) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(dl, "_fetch_url", offline)
    monkeypatch.setattr(dl, "_hf_snapshot", offline)
    d = tmp_path / "D"
    with pytest.raises(dl.DownloadError) as info:
        dl.download_datasets(d)
    msg = str(info.value)
    assert "clotho: ConnectionError: network is unreachable" in msg and "audiocaps: RuntimeError: no ffmpeg" in msg
    assert "exclusion_csv: OSError: Name or service not known" in msg
    assert f"{d}/dcase2024_task6_excluded_freesound_ids.csv: from {dl.EXCLUSION_CSV_URL}" in msg
    assert "downloaded: wavcaps:" in msg and f"{d}/WavCaps/:" not in msg

    class Broken:  # aac-datasets installed, but torchaudio cannot load its CUDA libraries
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name.startswith("aac_datasets"):
                raise OSError("libc10_cuda.so: cannot open shared object file")

    for pkg in [m for m in sys.modules if m.startswith("aac_datasets")]:
        monkeypatch.delitem(sys.modules, pkg)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    with pytest.raises(dl.DownloadError, match="imports torchaudio, whose PyPI build needs CUDA libraries"):
        dl.download_datasets(d, dl.DownloadPlan(datasets=("wavcaps",)))


def test_other_commands_do_not_import_aac_datasets() -> None:
    """The extra is imported only by the download command."""
    import subprocess

    code = (
        "import sys; import dcase.cli, dcase.data.locate, dcase.data.sources, dcase.data.download; "
        "from dcase.cli import app; "
        "assert not any(m.startswith(('aac_datasets', 'torchaudio')) for m in sys.modules), 'imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
