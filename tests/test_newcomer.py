"""The newcomer's path: the README's first command, in a copy of the repo with a brand-new venv.

It must set everything up from nothing, start the app on its port, and on first open index the
shipped sample corpus. (The README's second command is the one CI runs, so it is covered by CI itself.)
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.browser_support import CHROMIUM, CHROMIUM_FLAGS, free_port, wait_healthy
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_starts_with_the_two_commands():
    commands = readme_commands()
    assert commands[0].startswith("bash scripts/start.sh")
    assert "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_first_command_sets_up_and_serves_the_sample_corpus(tmp_path):
    repo = tmp_path / "fresh"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    assert not (repo / ".venv").exists()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GROUNDWORK_", "GEMINI", "GOOGLE_", "VIRTUAL_ENV"))}
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if ".venv" not in p)
    # A newcomer's machine has embedded nothing yet: an empty embedding cache, not the suite's (nor ~/.cache's).
    env["GROUNDWORK_EMBEDDING_CACHE"] = str(tmp_path / "cache" / "embeddings.sqlite")
    command = readme_commands()[0]
    log = open(tmp_path / "start.log", "w")
    started = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", f"{command} --server.port {port}"], cwd=repo, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # A first setup compiles llama.cpp unless pip's cache has the wheel.
        wait_healthy(f"http://127.0.0.1:{port}", proc, tmp_path / "start.log", timeout_s=1200, every_s=2)
        setup_seconds = time.monotonic() - started
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            # The sample corpus enters the user's data dir only on request.
            page.get_by_role("button", name="Index the sample corpus into my data dir").click(timeout=300_000)
            page.get_by_text(re.compile(r"Sample corpus ready: 40 documents")).wait_for(timeout=300_000)
            browser.close()
        print(f"README command 1: app answering after {setup_seconds:.0f} s; corpus ready after "
              f"{time.monotonic() - started:.0f} s")
        assert (repo / ".venv" / "bin" / "streamlit").exists()
        assert (repo / "data" / "groundwork.db").exists()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()
