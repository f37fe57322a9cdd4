"""Test helper: a study folder written by hand (study.json + one folder per dataset)."""

from __future__ import annotations

import json
from pathlib import Path


def make_study(
    root: Path,
    graph: str,
    datasets: dict[str, str],
    variables: dict | None = None,
    do: dict[str, object] | None = None,
) -> Path:
    """study.json (variables omitted when None) + one folder per dataset with data.csv and, for
    the names in ``do``, an intervention.json."""
    root.mkdir(parents=True, exist_ok=True)
    body: dict = {"graph": graph}
    if variables is not None:
        body["variables"] = variables
    (root / "study.json").write_text(json.dumps(body))
    for name, text in datasets.items():
        (root / name).mkdir()
        (root / name / "data.csv").write_text(text)
        if do and name in do:
            (root / name / "intervention.json").write_text(json.dumps({"do": do[name]}))
    return root
