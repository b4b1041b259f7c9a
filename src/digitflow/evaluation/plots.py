"""Figures people would rather look at than read: curves, confusion matrices, misclassified images.

Each function returns a matplotlib Figure (Agg backend, no display needed); the caller saves or
logs it and closes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure


def training_curves(history: Sequence[dict[str, float]]) -> Figure:
    """Training loss and accuracy per epoch, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o", label="train")
    ax_acc.plot(epochs, [h["accuracy"] for h in history], marker="o", label="train")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion_matrix_figure(confusion: torch.Tensor, classes: Sequence[str], title: str = "") -> Figure:
    """Heat map of a (C, C) confusion matrix, rows = true class, columns = predicted, counts printed."""
    counts = confusion.cpu().numpy()
    size = max(4.0, 0.5 * len(classes) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size), constrained_layout=True)
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    threshold = counts.max() / 2 if counts.size else 0
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if counts[i, j] > threshold else "black",
            )
    return fig


def misclassified_grid(
    images: torch.Tensor,
    predictions: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    max_images: int = 36,
    title: str = "",
) -> Figure:
    """Grid of misclassified images (N, 1, H, W) in [0, 1], each captioned 'pred X / true Y'."""
    wrong = (predictions.cpu() != labels.cpu()).nonzero().flatten()[:max_images].tolist()
    cols = 6
    rows = max(1, (len(wrong) + cols - 1) // cols)
    cells = [
        (images[i, 0], f"pred {classes[int(predictions[i])]}\ntrue {classes[int(labels[i])]}", "black") for i in wrong
    ]
    fig = _image_grid(cells, rows, cols, cell_inches=(1.4, 1.6), caption_lines=2)
    fig.suptitle(title or f"misclassified ({len(wrong)} shown)")
    return fig


def robustness_figure(epsilons: Sequence[float], accuracy: Mapping[str, Sequence[float]], title: str = "") -> Figure:
    """Accuracy against epsilon, one line per attack (``{"fgsm": [...], "pgd": [...]}``)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
    for (attack, values), marker in zip(accuracy.items(), "osd^v", strict=False):
        ax.plot(epsilons, values, marker=marker, label=attack.upper())
    ax.set_xlabel("epsilon (L-infinity, pixel scale 0-1)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "accuracy under attack")
    return fig


def adversarial_grid(
    images: torch.Tensor,
    predictions: torch.Tensor,
    labels: torch.Tensor,
    epsilons: Sequence[float],
    classes: Sequence[str],
    title: str = "",
) -> Figure:
    """Clean and attacked images: one row per epsilon (``images`` (E, K, 1, H, W), row 0 the clean
    ones at epsilon 0), each captioned with the model's prediction, in red where it is wrong."""
    rows, cols = images.shape[0], images.shape[1]
    cells = []
    for r in range(rows):
        for c in range(cols):
            predicted, truth = int(predictions[r, c]), int(labels[c])
            cells.append((images[r, c, 0], f"pred {classes[predicted]}", "black" if predicted == truth else "red"))
    fig = _image_grid(
        cells, rows, cols, cell_inches=(1.2, 1.35), caption_lines=1, row_labels=[f"eps {e:g}" for e in epsilons]
    )
    fig.suptitle(title or "clean (top) and adversarial images with the model's predictions")
    return fig


def _image_grid(
    cells: Sequence[tuple[torch.Tensor, str, str]],
    rows: int,
    cols: int,
    cell_inches: tuple[float, float],
    caption_lines: int,
    row_labels: Sequence[str] = (),
) -> Figure:
    """(H, W) images in [0, 1] with a caption (text, colour) above each, row by row, as one picture.

    One Axes and one ``imshow`` of the tiled images, the captions as its texts: a subplot per image
    took 0.8-1.2 s to lay out and draw for 36-56 images, this takes a tenth of that.
    """
    height, width = (int(cells[0][0].shape[-2]), int(cells[0][0].shape[-1])) if cells else (28, 28)
    pad, caption = 2, 6 * caption_lines  # pixels between cells; pixels of caption room above each image
    cell_h, cell_w = height + pad + caption, width + pad
    canvas = np.full((rows * cell_h, cols * cell_w), np.nan)  # NaN: drawn as the background
    fig, ax = plt.subplots(figsize=(cols * cell_inches[0], rows * cell_inches[1]), constrained_layout=True)
    for k, (image, text, colour) in enumerate(cells):
        top, left = (k // cols) * cell_h + caption, (k % cols) * cell_w
        canvas[top : top + height, left : left + width] = image.detach().float().cpu().numpy()
        ax.text(left + width / 2, top - 1, text, ha="center", va="bottom", fontsize=8, color=colour)
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(canvas, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * cell_h + caption + height / 2 for r in range(len(row_labels))], list(row_labels), fontsize=8)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(length=0)
    return fig


def gan_curves(history: Sequence[dict[str, float]]) -> Figure:
    """A GAN's epochs: discriminator and generator loss, mean D(x) and D(G(z)), and, where the run was
    judged, FID against its floor and the coverage of classes."""
    epochs = [h["epoch"] for h in history]
    judged = [h for h in history if "gan/fid" in h]
    fig, axes = plt.subplots(1, 3 if judged else 2, figsize=(13 if judged else 9, 3.5), constrained_layout=True)
    ax_loss, ax_d = axes[0], axes[1]
    ax_loss.plot(epochs, [h["d_loss"] for h in history], marker="o", label="discriminator")
    ax_loss.plot(epochs, [h["g_loss"] for h in history], marker="o", label="generator")
    ax_loss.set_title("loss")
    ax_d.plot(epochs, [h["d_real"] for h in history], marker="o", label="D(x), real")
    ax_d.plot(epochs, [h["d_fake"] for h in history], marker="o", label="D(G(z)), generated")
    ax_d.set_ylim(0, 1)
    ax_d.set_title("discriminator output")
    if judged:
        ax_fid = axes[2]
        judged_epochs = [h["epoch"] for h in judged]
        ax_fid.plot(judged_epochs, [h["gan/fid"] for h in judged], marker="o", label="FID")
        ax_fid.plot(judged_epochs, [h["gan/fid_floor"] for h in judged], linestyle="--", label="floor (real vs real)")
        ax_fid.plot(
            judged_epochs, [3 * h["gan/fid_floor"] for h in judged], linestyle=":", color="gray", label="3x floor"
        )
        ax_fid.set_yscale("log")
        ax_fid.set_title("FID (judge's features)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def metric_against_param(
    values: Sequence[object], figures: Sequence[float], metric: str, param: str, *, log_x: bool = False, best: int = -1
) -> Figure:
    """A sweep's ``metric`` against one swept ``param``: a point per trial (numbers on a numeric axis,
    anything else as categories), the best trial (index ``best``) ringed."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        xs: list[float] = [float(v) for v in values]  # type: ignore[arg-type]  # checked just above
        ax.set_xscale("log" if log_x else "linear")
    else:
        labels = sorted({str(v) for v in values})
        xs = [float(labels.index(str(v))) for v in values]
        ax.set_xticks(range(len(labels)), labels)
    ax.scatter(xs, figures, alpha=0.8)
    if 0 <= best < len(xs):
        ax.scatter([xs[best]], [figures[best]], s=160, facecolors="none", edgecolors="crimson", label="best")
        ax.legend(fontsize="small")
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {param}")
    ax.grid(alpha=0.3)
    return fig
