"""Writing a matrix result: eval.json (strict JSON: NaN becomes null), eval.png, a text table."""

from __future__ import annotations

import json
import math
import pathlib

from m4.eval.heatmap import render_heatmap

JSON_FILE = "eval.json"
PNG_FILE = "eval.png"


def json_ready(value):
    """The result with NaN / inf as None and numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(result: dict, out: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes OUT/eval.json and OUT/eval.png; returns their paths."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_FILE, "png": out / PNG_FILE}
    text = json.dumps(json_ready(result), indent=1, allow_nan=False)
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(paths["json"])
    render_heatmap(result).save(paths["png"])
    return paths


def summary_table(result: dict) -> str:
    """The primary metrics as a fixed-width table (rows: inputs, columns: targets)."""
    targets = result["targets"]
    width = 2 + max(10, *(max(len(t), len(result["primary"][t]["name"]) + 1) for t in targets))
    head = "input \\ target".ljust(16) + "".join(t.rjust(width) for t in targets)
    metric_line = "".ljust(16) + "".join(
        (result["primary"][t]["name"] + ("+" if result["primary"][t]["higher_is_better"]
                                         else "-")).rjust(width) for t in targets)
    lines = [head, metric_line]
    for row in result["rows"]:
        cells = []
        for t in targets:
            cell = result["cells"][row][t]
            value = None if cell is None else cell["value"]
            cells.append(("-" if value is None else "n/a" if not math.isfinite(value)
                          else f"{value:.3f}").rjust(width))
        lines.append(row.ljust(16) + "".join(cells))
    for name, b in result.get("baselines", {}).items():
        lines.append(f"{name}: {b['metric']} {b['caption']:.3f} (own caption) vs "
                     f"{b['shuffled_caption']:.3f} (another scene's caption)")
    lines.append("(+: higher is better, -: lower is better)")
    return "\n".join(lines)


__all__ = ["JSON_FILE", "PNG_FILE", "json_ready", "summary_table", "write_report"]
