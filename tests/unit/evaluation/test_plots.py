"""Figures: each function returns a Figure that renders to PNG, with the content it promises."""

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from digitflow.evaluation.plots import adversarial_grid, confusion_matrix_figure, misclassified_grid, training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = [str(k) for k in range(3)]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=30)
    plt.close(fig)
    return buf.getvalue()


HISTORY = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5}, {"epoch": 2, "loss": 0.5, "accuracy": 0.8}]


def test_training_curves():
    fig = training_curves(HISTORY)
    assert isinstance(fig, Figure)
    ax_loss, ax_acc = fig.axes
    assert np.asarray(ax_loss.lines[0].get_ydata()).tolist() == [1.0, 0.5]
    assert np.asarray(ax_acc.lines[0].get_ydata()).tolist() == [0.5, 0.8]
    assert np.asarray(ax_loss.lines[0].get_xdata()).tolist() == [1, 2]
    assert [len(ax.lines) for ax in fig.axes] == [1, 1]
    assert _png(fig).startswith(PNG_MAGIC)


def test_confusion_matrix_figure():
    confusion = torch.tensor([[5, 1, 0], [0, 3, 2], [1, 0, 4]])
    fig = confusion_matrix_figure(confusion, CLASSES, title="test")
    (ax,) = fig.axes[:1]
    assert ax.get_title() == "test"
    texts = [t.get_text() for t in ax.texts]
    assert texts == [str(v) for v in confusion.flatten().tolist()]  # every count printed, row by row
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert _png(fig).startswith(PNG_MAGIC)


def test_misclassified_grid_shows_only_the_wrong_ones():
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    predictions = torch.tensor([0, 2, 2, 1, 1, 2, 0, 0])  # wrong at 1, 3, 7
    fig = misclassified_grid(images, predictions, labels, CLASSES)
    captions = [text.get_text() for ax in fig.axes for text in ax.texts]
    assert captions == ["pred 2\ntrue 1", "pred 1\ntrue 0", "pred 0\ntrue 1"]
    assert "3 shown" in fig.get_suptitle()
    assert _png(fig).startswith(PNG_MAGIC)


@pytest.mark.parametrize(("wrong", "max_images"), [(0, 36), (10, 4)])
def test_misclassified_grid_edge_counts(wrong, max_images):
    labels = torch.zeros(12, dtype=torch.long)
    predictions = labels.clone()
    predictions[:wrong] = 1
    fig = misclassified_grid(torch.rand(12, 1, 28, 28), predictions, labels, CLASSES, max_images=max_images)
    (ax,) = fig.axes  # one picture of the tiled images, a caption per image
    assert len(ax.texts) == min(wrong, max_images)
    pixels = ax.images[0].get_array()
    assert pixels is not None
    shown = ~np.isnan(np.ma.filled(pixels, np.nan))
    assert shown.sum() == min(wrong, max_images) * 28 * 28  # every shown image's pixels, nothing else
    assert _png(fig).startswith(PNG_MAGIC)


def test_adversarial_grid_captions_each_prediction_red_where_wrong_with_a_row_per_epsilon():
    images = torch.rand(3, 2, 1, 28, 28)  # 3 epsilons x 2 images
    labels = torch.tensor([0, 1])
    predictions = torch.tensor([[0, 1], [0, 2], [1, 2]])
    fig = adversarial_grid(images, predictions, labels, [0, 0.1, 0.2], CLASSES)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["pred 0", "pred 1", "pred 0", "pred 2", "pred 1", "pred 2"]
    assert [t.get_color() for t in ax.texts] == ["black", "black", "black", "red", "red", "red"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["eps 0", "eps 0.1", "eps 0.2"]
    assert _png(fig).startswith(PNG_MAGIC)
