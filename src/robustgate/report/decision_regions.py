"""Decision regions of 2-D classifiers, with the robust-and-inaccurate points marked."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from robustgate.evaluate.regions import Panel  # noqa: E402
from robustgate.io import atomic_write  # noqa: E402

# the plot's file in a run directory (drawn by the pipeline, shown by the run report)
FILE = "decision_regions.png"
# grid points per axis of a panel
RESOLUTION = 200
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def plot_decision_regions(
    panels: Mapping[str, Panel],
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    path: str | Path,
    resolution: int = RESOLUTION,
    title: str = "",
) -> None:
    """One PNG with a panel per classifier over ``[0, 1]²``; data points coloured by label;
    robust-and-inaccurate points ringed in black; regions routed to the core hatched."""
    axis = np.linspace(0.0, 1.0, resolution, dtype=np.float32)
    grid_x, grid_y = np.meshgrid(axis, axis)
    grid = torch.from_numpy(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))
    colours = ListedColormap(PALETTE[:num_classes])
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (name, panel) in zip(axes[0], panels.items(), strict=True):
        labels, abstained = panel.predict(grid)
        ax.imshow(labels.reshape(grid_x.shape), origin="lower", extent=(0, 1, 0, 1),
                  cmap=colours, vmin=-0.5, vmax=num_classes - 0.5, alpha=0.35,
                  interpolation="nearest")
        if abstained is not None and abstained.any():
            ax.contourf(grid_x, grid_y, abstained.reshape(grid_x.shape).astype(float),
                        levels=[0.5, 1.5], colors="none", hatches=["////"])
            ax.contour(grid_x, grid_y, abstained.reshape(grid_x.shape).astype(float),
                       levels=[0.5], colors="k", linewidths=0.6)
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap=colours, vmin=-0.5, vmax=num_classes - 0.5,
                   s=6, linewidths=0)
        marked = panel.robust_inaccurate
        ax.scatter(x[marked, 0], x[marked, 1], s=40, facecolors="none", edgecolors="black",
                   linewidths=1.0, label=f"robust & inaccurate ({int(marked.sum())})")
        ax.set_title(name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.legend(loc="lower right", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)
