"""Writing an export: JSONL files under temporary names until the export succeeds, the folder, the zip."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

from core.db import now
from core.errors import ValidationError


class Output:
    """One JSONL file being written: a temporary name until the export succeeds; checksum as it goes."""

    def __init__(self, out_dir: Path, name: str):
        self.name = name
        self.path = out_dir / name
        self.tmp = out_dir / f".{name}.partial"
        self.rows = 0
        self.bytes = 0
        self._sha = hashlib.sha256()
        self._fh = None

    def write(self, line: bytes) -> None:
        if self._fh is None:
            self._fh = self.tmp.open("wb")
        self._fh.write(line)
        self._sha.update(line)
        self.rows += 1
        self.bytes += len(line)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def commit(self) -> dict[str, Any] | None:
        self.close()
        if not self.rows:
            self.path.unlink(missing_ok=True)  # an older export's file would contradict this manifest
            return None
        os.replace(self.tmp, self.path)
        return {"rows": self.rows, "bytes": self.bytes, "sha256": self._sha.hexdigest()}

    def discard(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)


def prepare_out_dir(out_dir: Path | str) -> Path:
    out = Path(out_dir).expanduser()
    try:
        out = out.resolve()
        if out.exists() and not out.is_dir():
            raise ValidationError(f"The export path {out} is a file, not a folder: choose a folder (--out DIR).")
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".groundwork-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValidationError(f"Cannot write the export to {out}: {e.strerror or e}. Choose a folder you can write "
                              "to (--out DIR on the CLI, the output folder field on the Export page).") from None
    return out


def zip_export(result_dir: Path | str, manifest: dict[str, Any]) -> Path:
    """A zip of the manifest and the files it lists, beside the export folder (for browser downloads)."""
    folder = Path(result_dir)
    target = folder.parent / f"{folder.name}.zip"
    tmp = target.with_name(f".{target.name}.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(folder / "manifest.json", "manifest.json")
        if (folder / "README.md").exists():
            z.write(folder / "README.md", "README.md")
        for name in manifest["files"]:
            z.write(folder / name, name)
    os.replace(tmp, target)
    return target


def default_out_dir(settings: Any) -> Path:
    """``<data dir>/exports/<UTC timestamp>``: a new folder per export, so earlier exports stay as they were."""
    stamp = now().replace(":", "").replace("-", "").replace(".", "")[:18]
    return Path(settings.exports_path) / f"export-{stamp}"
