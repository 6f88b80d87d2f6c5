"""pyproject declares exactly what the app imports: nothing imported only by luck of a transitive dependency,
nothing declared that no module uses. And setup installs from the lock file."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from tests.conftest import ROOT

# Declared without a direct import, each for a reason.
NOT_IMPORTED_ON_PURPOSE: dict[str, str] = {}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normal(re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}


def _imported_top_level() -> set[str]:
    """Top-level modules the app imports: core/, pages/ and app.py (tests and bench have their own extras)."""
    files = [ROOT / "app.py", *(ROOT / "core").rglob("*.py"), *(ROOT / "pages").rglob("*.py")]
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("core", "pages")}


def test_every_imported_package_is_declared():
    by_module = packages_distributions()
    declared = _declared()
    undeclared = {}
    for module in sorted(_imported_top_level()):
        dists = {_normal(d) for d in by_module.get(module, [])}
        assert dists, f"{module} is imported but no installed distribution provides it"
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert undeclared == {}, f"imported but not in pyproject dependencies: {undeclared}"


def test_every_declared_package_is_imported():
    provided: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            provided.setdefault(_normal(dist), set()).add(module)
    imported = _imported_top_level()
    unused = sorted(d for d in _declared() - set(NOT_IMPORTED_ON_PURPOSE) if not provided.get(d, set()) & imported)
    assert unused == [], f"declared in pyproject but imported nowhere in the app: {unused}"


def test_setup_installs_under_the_lock_file_and_it_pins_what_pyproject_pins():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            lock[_normal(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        if "==" in spec:
            name, version = (part.strip() for part in spec.split("#")[0].strip().strip(",").split("=="))
            assert lock.get(_normal(name)) == version.strip('"'), (name, version, lock.get(_normal(name)))
    assert "+" not in lock["torch"]  # the CPU index's build and the registries' both satisfy it
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert setup.count('"${LOCK[@]}"') == 3 and "LOCK=(-c requirements.lock)" in setup


def _torch_install(tmp_path, index: str):
    """scripts/install_torch.sh in a fresh venv, as a dry run (pip resolves and fetches but installs nothing)."""
    import os
    import subprocess
    import time

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # empty: torch must really be fetched
    started = time.monotonic()
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "install_torch.sh"), str(venv / "bin" / "python"),
                             "-c", str(ROOT / "requirements.lock")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "GROUNDWORK_TORCH_INDEX": index, "PIP_DRY_RUN": "1"})
    lines, first_line_after = [], None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if first_line_after is None and line.startswith("torch:"):
            first_line_after = time.monotonic() - started
    assert proc.wait(timeout=600) == 0, lines
    return lines, first_line_after


def test_torch_falls_back_to_the_registries_fast_when_the_cpu_index_does_not_answer(tmp_path):
    import socket

    # A server that accepts connections and never answers: the worst case (a firewall that drops packets).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        index = f"http://127.0.0.1:{silent.getsockname()[1]}/whl/cpu"
        lines, decided_after = _torch_install(tmp_path, index)
    assert f"torch: PyTorch's CPU index ({index}) is not reachable; using the package registries" in lines
    assert "torch: torch==2.13.0 from the package registries" in lines
    assert decided_after < 10, decided_after  # one 5 s probe, no pip retries
    print(f"fallback decided after {decided_after:.1f} s")


def test_torch_comes_from_the_cpu_index_when_it_answers(tmp_path):
    import functools
    import glob
    import http.server
    import threading

    wheels = glob.glob("/opt/wheels/torch-2.13.0*.whl")
    if not wheels:
        import pytest

        pytest.skip("no local torch wheel to serve as a stand-in CPU index on this machine")
    root = tmp_path / "index" / "torch"
    root.mkdir(parents=True)
    wheel = Path(wheels[0])
    (root / wheel.name).symlink_to(wheel)
    (root / "index.html").write_text(f'<a href="{wheel.name.replace("+", "%2B")}">{wheel.name}</a>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "index"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        index = f"http://127.0.0.1:{server.server_port}"
        lines, _ = _torch_install(tmp_path, index)
    finally:
        server.shutdown()
    assert f"torch: CPU build from {index}" in lines, [line for line in lines if "is ignored" not in line]
