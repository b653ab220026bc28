"""The training loss and the held-out WER against the step, as one PNG."""

from __future__ import annotations

from typing import Sequence, Tuple

CURVES_FILE = "curves.png"


def plot(path: str, losses: Sequence[Tuple[int, float]], wers: Sequence[Tuple[int, float]],
         title: str) -> None:
    """losses and wers: (step, value); the WER in percent on a second axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    loss_axis = figure.add_subplot()
    if losses:
        loss_axis.plot(*zip(*losses), color="tab:blue", label="training loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss", color="tab:blue")
    wer_axis = loss_axis.twinx()
    if wers:
        steps, values = zip(*wers)
        wer_axis.plot(steps, [100 * v for v in values], color="tab:red", marker="o",
                      label="held-out WER")
    wer_axis.set_ylabel("held-out WER (%)", color="tab:red")
    wer_axis.set_ylim(bottom=0)
    loss_axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
