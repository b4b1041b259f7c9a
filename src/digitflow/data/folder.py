"""``folder:DIR``: one sub-folder per class (torchvision's ImageFolder layout) of PNG, JPEG or BMP images.

Images of any size and colour become 28x28 grayscale with MNIST's polarity (bright ink on black):

- colour is turned into luma (Pillow's ``L``), transparency laid over white paper first;
- dark ink on a light background (scans, photos of paper) is inverted: in ``invert=auto`` an image is
  taken to be on paper when the median of its outermost pixels is above mid-grey (a digit's frame is
  background in MNIST, USPS and scans alike); ``yes`` and ``no`` force it either way;
- images that are not 28x28 are framed like a cross-domain target (``frame``: ``mnist-frame``, the
  default, or ``resize``; :mod:`digitflow.data.framing`) and rounded back to uint8; 28x28 images pass
  through unchanged, as they do for every dataset, so MNIST digits saved as PNG keep their bytes.

Classes are the sub-folders' names in sorted order (ImageFolder's), images within one in sorted path
order. A folder of images without sub-folders is a set of unlabeled images (every label -1), for
prediction only. Every problem is a one-line DataError naming the folder or the image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from digitflow.data.framing import MODEL_SIZE, frame_images
from digitflow.errors import DataError
from digitflow.fileio import one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
UNLABELED = -1  # the label of every image of a folder without class sub-folders


def _images_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p.name))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _subfolders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def is_unlabeled(root: Path) -> bool:
    """Whether ``root`` is a folder of images without class sub-folders (unlabeled: for prediction only)."""
    root = Path(root)
    return root.is_dir() and not _subfolders(root) and bool(_images_in(root))


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root``, sorted by name; DataError if there is none or ``root`` is no folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder:{root}: no such folder; give a folder with one sub-folder of images per class")
    folders = _subfolders(root)
    if not folders:
        raise DataError(f"{root} holds no class sub-folders; put each class's images in a sub-folder named after it")
    return folders


def image_files(root: Path) -> list[tuple[Path, int]]:
    """Every image of ``root`` with its class index, class by class, sorted paths within a class (any depth);
    for a folder without class sub-folders (:func:`is_unlabeled`), its images, sorted, each labelled -1.

    Raises DataError naming an empty class folder (no PNG, JPEG or BMP in it).
    """
    if is_unlabeled(root):
        return [(path, UNLABELED) for path in _images_in(Path(root))]
    found: list[tuple[Path, int]] = []
    for label, folder in enumerate(class_folders(root)):
        files = sorted(
            Path(dirpath) / name for dirpath, _, names in os.walk(folder) for name in names if _is_image(name)
        )
        if not files:
            raise DataError(
                f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some or remove the folder"
            )
        found += [(path, label) for path in files]
    return found


def read_gray(path: Path) -> np.ndarray:
    """One image file as uint8 luma (H, W); DataError naming the file if Pillow cannot read it."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image: Image.Image = opened
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                # Transparent pixels are paper: lay the image over white before dropping alpha.
                rgba = image.convert("RGBA")
                paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(paper, rgba)
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"image {path} cannot be read ({one_line(e)}); replace or remove it") from e


def on_paper(gray: np.ndarray) -> bool:
    """Whether a uint8 image is dark ink on a light background: its border's median is above mid-grey."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return bool(np.median(border) > 127)


def read_folder(root: Path, files: list[tuple[Path, int]], frame: str, invert: str) -> tuple[torch.Tensor, str]:
    """The images of ``files`` (from :func:`image_files`) as uint8 (N, 28, 28), and a note saying how many
    were inverted (``invert``: ``auto``, ``yes`` or ``no``) and framed (``frame``)."""
    grays = [read_gray(path) for path, _ in files]
    flips = [on_paper(g) if invert == "auto" else invert == "yes" for g in grays]
    grays = [255 - g if flip else g for g, flip in zip(grays, flips, strict=True)]
    images = torch.empty(len(grays), MODEL_SIZE, MODEL_SIZE, dtype=torch.uint8)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(grays):
        by_size.setdefault(g.shape[:2], []).append(i)
    for size, indices in by_size.items():
        batch = torch.from_numpy(np.stack([grays[i] for i in indices]))
        if size == (MODEL_SIZE, MODEL_SIZE):
            images[indices] = batch  # as frame_images passes them: unchanged
        else:
            framed = frame_images(batch, frame)[:, 0]
            images[indices] = framed.mul(255).round_().to(torch.uint8)
    reframed = sum(len(i) for s, i in by_size.items() if s != (MODEL_SIZE, MODEL_SIZE))
    note = (
        f"invert={invert}: {sum(flips)} of {len(grays)} images inverted; "
        f"frame={frame}: {reframed} of {len(grays)} images framed to {MODEL_SIZE}x{MODEL_SIZE}"
    )
    return images, note
