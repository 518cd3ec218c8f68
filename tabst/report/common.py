"""Small helpers shared by the report's modules: matplotlib set-up, embedded images, numbers,
and the error for a damaged run folder."""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path

from ..errors import TabstError


def setup_mpl():
    """pyplot on the Agg backend with the report's projector-sized type."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 13, "axes.titlesize": 14, "axes.labelsize": 13,
                         "xtick.labelsize": 12, "ytick.labelsize": 12, "legend.fontsize": 12,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def b64img(fig, dpi: int, fmt: str = "png") -> str:
    """The figure as a ``data:`` URL (PNG, or JPEG for figures over a photograph), closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    extra = {"pil_kwargs": {"quality": 82}} if fmt == "jpeg" else {}
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", facecolor="white", **extra)
    plt.close(fig)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mean_sd_text(mu: float, sd: float) -> str:
    """A leaderboard cell: ``0.412 ± 0.010``, or ``—`` when the mean is not a number."""
    return f"{fmt(mu)} ± {fmt(sd)}" if math.isfinite(mu) else "—"


def fmt(v, nd=3):
    """A number for a table cell: ``nd`` decimals, ``—`` for NaN/inf, scientific when tiny/huge."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(v):
        return "—"
    if v != 0 and (abs(v) < 10 ** -nd or abs(v) >= 1e5):
        return f"{v:.{nd}g}"
    return f"{v:.{nd}f}"


def corrupt(path: Path, why: str) -> TabstError:
    """The error for a run-folder file that cannot be read."""
    return TabstError(f"{path}: {why}. The run folder is damaged (an interrupted copy or a hand "
                      "edit?): restore the file, or re-run `tabst compare`.")
