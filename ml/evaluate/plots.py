"""ROC and calibration plots as PNG files (matplotlib's Agg canvas; pyplot is never touched)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ml.evaluate.calibration import ece, reliability_curve
from ml.evaluate.card import fmt
from ml.evaluate.metrics import roc_auc, roc_curve


def _new_figure(width_in: float, height_in: float) -> Any:
    """A matplotlib Figure bound to the Agg (file-only) canvas; pyplot is never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_roc(
    curves: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    path: str | os.PathLike[str],
    title: str = "ROC",
    operating_points: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """Write a PNG of one ROC curve per ``label -> (y, scores)``, AUC in the legend.

    ``operating_points`` maps a name to its ``(fpr, tpr)`` and is drawn as markers.
    """
    from matplotlib.figure import Figure

    fig: Figure = _new_figure(5.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for label, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{label} (AUC {fmt(roc_auc(y, s))})")
    for name, (x, t) in (operating_points or {}).items():
        ax.plot([x], [t], marker="o", linestyle="none", label=f"{name} ({fmt(1 - x)} spec, {fmt(t)} sens)")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png", dpi=100)


def plot_calibration(
    y: npt.ArrayLike,
    p: npt.ArrayLike,
    path: str | os.PathLike[str],
    n_bins: int = 10,
    title: str = "Calibration",
) -> None:
    """Write a PNG with a reliability diagram (with ECE) above a histogram of ``p``."""
    from matplotlib.figure import Figure

    mean_p, frac, _counts = reliability_curve(y, p, n_bins)
    probs = np.asarray(p, dtype=np.float64)
    fig: Figure = _new_figure(5.0, 6.0)
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect")
    used = np.isfinite(mean_p)
    ax.plot(mean_p[used], frac[used], marker="o", label=f"model (ECE {fmt(ece(y, p, n_bins))})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("fraction with pathology")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    hx.hist(probs, bins=n_bins, range=(0.0, 1.0), color="0.4")
    hx.set_xlabel("predicted P(pathology)")
    hx.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png", dpi=100)
