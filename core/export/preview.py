"""The first rows of each file an export would write, computed the real way into a scratch folder."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from core.db import Database
from core.export.options import ExportOptions
from core.export.run import export


def preview_export(db: Database, options: ExportOptions, settings: Any = None, rows: int = 3) -> dict[str, Any]:
    """What :func:`export` would write, before anything is written where the user asked.

    The whole export runs into a temporary folder (so the preview is exactly what the files will hold,
    split and filters included) and is deleted after reading the first ``rows`` rows of each JSONL file.

    Returns:
        ``{"files": {name: {"rows": [first rows], "total": n}}, "warnings": [...]}``.

    Raises:
        ValidationError: as :func:`export` (an empty selection, bad options).
    """
    with tempfile.TemporaryDirectory(prefix="groundwork-preview-") as scratch:
        result = export(db, options, Path(scratch), settings=settings)
        files: dict[str, Any] = {}
        for path in sorted(Path(scratch).glob("*.jsonl")):
            first, total = [], 0
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        total += 1
                        if len(first) < rows:
                            first.append(json.loads(line))
            files[path.name] = {"rows": first, "total": total}
        return {"files": files, "warnings": list(result.manifest.get("warnings", []))}
