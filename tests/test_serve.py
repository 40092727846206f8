"""``dcase serve`` in a real headless browser (Debian's chromium driven by Playwright): the test starts the server
on localhost with a tiny system and index, uploads a wav and sees its caption and candidates, then searches a
phrase and sees the ranked clips with audio players. Skipped, with the reason, without chromium / gradio /
playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _system_util import build_parts, build_system, write_audio

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium browser (apt-get install -y chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"dcase serve exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError("dcase serve did not start listening in time")


def test_web_page_captions_and_searches(tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'dcase[serve]')")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    from dcase.api import Captioner, Retriever

    system = build_system(tmp_path, build_parts(tmp_path / "parts"))
    sounds = tmp_path / "sounds"
    for i in range(4):
        write_audio(sounds / f"sound {i}.wav", 0.6 + 0.2 * i, 32000, freq=250.0 * (i + 1), seed=i)
    Retriever.from_pretrained(system).index(sounds, out=tmp_path / "index")
    clip = write_audio(tmp_path / "upload" / "my clip.wav", 1.0, 44100, channels=2, freq=700.0, seed=7)
    expected = Captioner.from_pretrained(system).caption(clip)[0]
    ranked = Retriever.load_index(tmp_path / "index").search("a bright tone", k=3)

    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "dcase.cli", "serve", "--system", str(system), "--index", str(tmp_path / "index")]
    log_file = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 - read back on failure
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(port, proc)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.set_default_timeout(90_000)
            page.goto(f"http://127.0.0.1:{port}/")
            # Caption tab: upload the wav, press Caption, read the caption and the candidates table
            page.locator("input[type=file]").first.set_input_files(str(clip))
            page.locator("audio").first.wait_for(state="attached")
            page.locator("#caption-button").click()
            box = page.locator("#caption-output textarea")
            sync_api.expect(box).not_to_have_value("", timeout=90_000)
            assert box.input_value() == expected  # same file name, same samples as the Python API
            sync_api.expect(page.locator("#candidates")).to_contain_text("(selected)")
            # Search tab: type a phrase, press Search, see the ranked files and their audio players
            page.get_by_role("tab", name="Search").click()
            page.locator("#query textarea").fill("a bright tone")
            page.locator("#search-button").click()
            table = page.locator("#results")
            sync_api.expect(table).to_contain_text(Path(ranked[0].file).name, timeout=90_000)
            text = table.inner_text()
            positions = [text.index(Path(h.file).name) for h in ranked]
            assert positions == sorted(positions)  # best first, in the API's order
            players = page.locator("audio")
            assert players.count() >= 3
            browser.close()
    except BaseException:
        log_file.seek(0)
        print(log_file.read()[-5000:])  # the server's log, shown by pytest on failure
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()
