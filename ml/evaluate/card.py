"""The Markdown model card, and how its numbers are written for humans."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def fmt(value: Any, digits: int = 3) -> str:
    """Format a number for humans; ``nan``/``None`` become ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(value)


def fmt_ci(ci: Any) -> str:
    """Format a ``[lo, hi]`` interval, or ``n/a``."""
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        lo, hi = fmt(ci[0]), fmt(ci[1])
        return "n/a" if "n/a" in (lo, hi) else f"[{lo}, {hi}]"
    return "n/a"


def _link(image: str, card_dir: Path) -> str:
    """Image path as written in the card: relative to the card when given absolute."""
    p = Path(image)
    if p.is_absolute():
        try:
            return Path(os.path.relpath(p, card_dir)).as_posix()
        except ValueError:  # another drive (Windows)
            return p.as_posix()
    return p.as_posix()


def write_model_card(
    path: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    arch_text: str,
    input_size: Sequence[int] | str,
    metrics: Mapping[str, Any],
    operating_points: Mapping[str, Mapping[str, Any]],
    training_data: str,
    intended_use: str,
    limitations: Sequence[str],
    reproduce_command: str,
    roc_png: str | None,
    calibration_png: str | None,
    clinical_use: bool,
    notes: str = "",
) -> None:
    """Write a Markdown model card.

    ``metrics`` is typically :func:`summarize`'s output: every key ``k`` whose
    ``k + "_ci95"`` is also present gets its CI in the same row. ``operating_points``
    is :func:`evaluate_operating_points`'s output. Image paths are linked as given
    (absolute ones are made relative to the card's folder). When ``clinical_use``
    is False a "NOT FOR CLINICAL USE" banner heads the card. ``notes`` (Markdown, e.g.
    how the model was trained, what it reached against its goals) ends the card verbatim.
    """
    out = Path(path)
    size = input_size if isinstance(input_size, str) else " x ".join(str(int(v)) for v in input_size)
    lines: list[str] = [f"# Model card: {name} {version}", ""]
    if not clinical_use:
        lines += [
            "> **NOT FOR CLINICAL USE**",
            ">",
            "> Research/demo model. It has not been validated or approved for diagnosis,"
            " triage or any other clinical decision.",
            "",
        ]
    lines += [
        "## Model",
        "",
        f"- Name: {name}",
        f"- Version: {version}",
        f"- Architecture: {arch_text}",
        f"- Input size: {size}",
        f"- Clinical use: {'yes' if clinical_use else 'NO'}",
        "",
        "## Intended use",
        "",
        intended_use,
        "",
        "## Training data",
        "",
        training_data,
        "",
        "## Metrics",
        "",
        "| Metric | Value | 95% CI |",
        "|---|---|---|",
    ]
    for key, value in metrics.items():
        if key.endswith("_ci95"):
            continue
        ci = metrics.get(f"{key}_ci95")
        lines.append(f"| {key} | {fmt(value)} | {fmt_ci(ci) if ci is not None else ''} |")
    lines += ["", "## Operating points", ""]
    if operating_points:
        lines += [
            "| Name | Threshold | Sensitivity (95% CI) | Specificity (95% CI) | PPV | NPV | F1 | n |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for op_name, op in operating_points.items():
            lines.append(
                f"| {op_name} | {fmt(op.get('threshold'), 4)}"
                f" | {fmt(op.get('sensitivity'))} {fmt_ci(op.get('sensitivity_ci95'))}"
                f" | {fmt(op.get('specificity'))} {fmt_ci(op.get('specificity_ci95'))}"
                f" | {fmt(op.get('ppv'))} | {fmt(op.get('npv'))} | {fmt(op.get('f1'))}"
                f" | {fmt(op.get('n'))} |"
            )
    else:
        lines.append("None selected.")
    lines.append("")
    if roc_png:
        lines += ["## ROC curve", "", f"![ROC curve]({_link(roc_png, out.parent)})", ""]
    if calibration_png:
        lines += ["## Calibration", "", f"![Calibration]({_link(calibration_png, out.parent)})", ""]
    lines += ["## Limitations", ""]
    lines += [f"- {item}" for item in limitations] or ["- None stated."]
    lines += ["", "## Reproduce", "", "```bash", reproduce_command, "```", ""]
    if notes.strip():
        lines += [notes.strip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
