"""CI cannot go green without a browser: .ci/run stops when chromium cannot be installed, and with
GROUNDWORK_REQUIRE_BROWSER=1 (which .ci/run sets) a missing browser or a run without browser tests fails."""

import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT


def _pytest(*args, **env):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_a_missing_chromium_fails_the_browser_tests_when_required():
    out = _pytest("tests/test_browser.py", "--collect-only", GROUNDWORK_REQUIRE_BROWSER="1",
                  GROUNDWORK_CHROMIUM="/nonexistent/chromium")
    assert out.returncode != 0, out.stdout
    assert "GROUNDWORK_REQUIRE_BROWSER=1 but there is no chromium at /nonexistent/chromium" in out.stdout


def test_a_run_in_which_no_browser_test_passed_fails_when_required():
    out = _pytest("tests/test_browser.py", "-k", "no_test_has_this_name", GROUNDWORK_REQUIRE_BROWSER="1")
    assert out.returncode != 0
    assert "no browser test (tests/test_browser.py) passed in this run" in out.stdout


def test_ci_stops_when_chromium_cannot_be_installed(tmp_path):
    # A copy of .ci/run in a scratch checkout whose PATH has no chromium and an apt-get that fails (no network).
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to fetch' >&2\nexit 100\n")
    (bin_dir / "bash").write_text("#!/bin/sh\necho SETUP-AND-TESTS-RAN\nexit 0\n")  # stands in for what follows
    for tool in ("apt-get", "bash"):
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    out = subprocess.run(["/bin/bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60,
                         env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert out.returncode != 0
    assert "SETUP-AND-TESTS-RAN" not in out.stdout
    assert "error: chromium could not be installed" in out.stderr
