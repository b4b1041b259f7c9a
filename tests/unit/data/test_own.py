"""A user's own files: idx:DIR, folder:DIR and csv:FILE specs, read, checked, held out and cached."""

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from digitflow.data import load_dataset, parse_spec, prepare
from digitflow.data.framing import PREPROCESSORS
from digitflow.data.own import holdout_indices
from digitflow.data.registry import DIGIT_CLASSES
from digitflow.data.spec import FRAMES
from digitflow.errors import DataError
from digitflow.params.run import build_config
from tests.fakedata import (
    fake_data_dir,
    fake_digits,
    fake_split,
    write_idx,
    write_image_folder,
    write_kaggle_csv,
)


def load(spec, tmp_path):
    return load_dataset(spec, tmp_path / "unused-data-dir", tmp_path / "cache")


def error(spec, tmp_path) -> str:
    with pytest.raises(DataError) as excinfo:
        load(spec, tmp_path)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- specs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("folder:digits", "folder:digits"),
        ("FOLDER:my digits?invert=YES,frame=mnist-frame[:80%]", "folder:my digits?invert=yes[:80%]"),
        ("csv:train.csv?split=test[1000:]", "csv:train.csv?split=test,holdout=10,seed=0[1000:]"),
        ("idx:raw?prefix=t10k,classes=10", "idx:raw?prefix=t10k"),
        ("idx:raw?split=train,holdout=12.50%,seed=3", "idx:raw?split=train,holdout=12.5,seed=3"),
    ],
)
def test_own_specs_parse_to_a_canonical_text(text, canonical):
    spec = parse_spec(text)
    assert str(spec) == canonical
    assert parse_spec(canonical) == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("folder:d?colour=red", "folder: takes split, holdout, seed, frame, invert"),
        ("folder:d?invert=maybe", "invert takes auto, yes, no"),
        ("csv:f?holdout=5", "need split=train or split=test"),
        ("csv:f?split=test,holdout=0", "between 0 and 100"),
        ("idx:d?classes=one", "classes takes a whole number"),
        ("folder:", "malformed dataset spec"),
    ],
)
def test_bad_own_specs_are_one_line_errors(text, expected):
    with pytest.raises(DataError, match=expected) as excinfo:
        parse_spec(text)
    assert "\n" not in str(excinfo.value)


def test_the_spec_knows_the_framings_there_are():
    assert tuple(PREPROCESSORS) == FRAMES


# --- bit-identical to the built-in loader -----------------------------------------------------------


def test_folder_csv_and_idx_give_the_builtin_loaders_tensors(tmp_path, monkeypatch):
    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("mnist",))
    builtin = load_dataset("mnist:test", data_dir, tmp_path / "cache", offline=True)
    images, labels = builtin.images.numpy(), builtin.labels.numpy()
    write_image_folder(tmp_path / "folder", images, labels)
    write_kaggle_csv(tmp_path / "digits.csv", images, labels)
    write_idx(tmp_path / "idx" / "my-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "idx" / "my-labels-idx1-ubyte", labels.astype(np.uint8))

    for spec in ("csv:{}/digits.csv", "idx:{}/idx"):
        own = load(spec.format(tmp_path), tmp_path)
        assert torch.equal(own.images, builtin.images)
        assert torch.equal(own.labels, builtin.labels)
        assert own.classes == builtin.classes
    folder = load(f"folder:{tmp_path}/folder", tmp_path)
    order = np.argsort(labels, kind="stable")  # a folder lists class by class, by file name within one
    assert torch.equal(folder.images, builtin.images[order])
    assert torch.equal(folder.labels, builtin.labels[order])
    assert folder.classes == builtin.classes == DIGIT_CLASSES


@pytest.mark.slow
def test_real_mnist_digits_keep_their_bytes_in_every_layout(tmp_path, shared_data):
    builtin = load_dataset("mnist:test[:300]", shared_data, tmp_path / "cache", offline=True)
    images, labels = builtin.images.numpy(), builtin.labels.numpy()
    write_image_folder(tmp_path / "folder", images, labels)
    write_kaggle_csv(tmp_path / "digits.csv", images, labels)
    folder = load(f"folder:{tmp_path}/folder", tmp_path)
    order = np.argsort(labels, kind="stable")
    assert torch.equal(folder.images, builtin.images[order])
    assert torch.equal(load(f"csv:{tmp_path}/digits.csv", tmp_path).images, builtin.images)
    idx = load(f"idx:{shared_data}/MNIST/raw?prefix=t10k[:300]", tmp_path)
    assert torch.equal(idx.images, builtin.images)
    assert torch.equal(idx.labels, builtin.labels)


# --- folder: ----------------------------------------------------------------------------------------


def test_folder_classes_come_from_the_sub_folders_in_any_number(tmp_path):
    images, _ = fake_digits(12)
    names = np.array(["cat", "dog", "emu"])[np.arange(12) % 3]
    for i, (image, name) in enumerate(zip(images, names, strict=True)):
        (tmp_path / "zoo" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "zoo" / name / f"{i}.bmp")
    ds = load(f"folder:{tmp_path}/zoo", tmp_path)
    assert ds.classes == ("cat", "dog", "emu")
    assert ds.num_classes == 3
    assert ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def paper_scan(image: np.ndarray, scale: int = 3) -> Image.Image:
    """A digit as dark ink on light paper, bigger and in colour, the way a scan or photo comes."""
    big = np.kron(255 - image, np.ones((scale, scale), dtype=np.uint8))
    return Image.fromarray(np.stack([big, big, big], axis=-1), mode="RGB")


def test_dark_ink_on_paper_is_inverted_framed_and_recorded(tmp_path):
    images, labels = fake_digits(10)
    write_image_folder(tmp_path / "d", images[:5], labels[:5])
    for i in range(5, 10):
        (tmp_path / "d" / str(labels[i])).mkdir(exist_ok=True)
        paper_scan(images[i]).save(tmp_path / "d" / str(labels[i]) / f"scan{i}.jpg", quality=95)
    prepared = prepare(f"folder:{tmp_path}/d", tmp_path, tmp_path / "cache")
    reading = dict(prepared.notes)["reading"]
    assert "invert=auto: 5 of 10 images inverted" in reading
    assert "frame=mnist-frame: 5 of 10 images framed to 28x28" in reading
    ds = load(f"folder:{tmp_path}/d", tmp_path)
    assert ds.images.shape == (10, 28, 28)
    # Inverted, the scans are bright ink on a dark border, as MNIST is.
    borders = torch.cat([ds.images[:, 0], ds.images[:, -1], ds.images[:, :, 0], ds.images[:, :, -1]], dim=1)
    assert borders.float().median(dim=1).values.max() < 64


def test_the_inversion_can_be_forced_either_way(tmp_path):
    images, labels = fake_digits(10)
    write_image_folder(tmp_path / "d", images, labels)
    plain = load(f"folder:{tmp_path}/d", tmp_path)
    never = load(f"folder:{tmp_path}/d?invert=no", tmp_path)
    always = prepare(f"folder:{tmp_path}/d?invert=yes", tmp_path, tmp_path / "cache")
    assert torch.equal(plain.images, never.images)
    assert torch.equal(load(always.spec, tmp_path).images, 255 - plain.images)
    assert "invert=yes: 10 of 10 images inverted" in dict(always.notes)["reading"]
    assert always.digest != prepare(f"folder:{tmp_path}/d", tmp_path, tmp_path / "cache").digest


def test_the_framing_of_other_sizes_is_an_option(tmp_path):
    images, labels = fake_digits(10, size=(16, 16))
    write_image_folder(tmp_path / "d", images, labels)
    framed = load(f"folder:{tmp_path}/d", tmp_path)
    resized = load(f"folder:{tmp_path}/d?frame=resize", tmp_path)
    assert framed.images.shape == resized.images.shape == (10, 28, 28)
    assert not torch.equal(framed.images, resized.images)


def test_bad_folders_are_one_line_errors_naming_the_folder_or_image(tmp_path):
    images, labels = fake_digits(10)
    write_image_folder(tmp_path / "d", images, labels)
    assert "no such folder" in error(f"folder:{tmp_path}/nowhere", tmp_path)
    (tmp_path / "flat").mkdir()
    assert "holds no class sub-folders" in error(f"folder:{tmp_path}/flat", tmp_path)
    (tmp_path / "d" / "7" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    (tmp_path / "d" / "empty").mkdir()
    assert f"class folder {tmp_path}/d/empty holds no images" in error(f"folder:{tmp_path}/d", tmp_path)
    (tmp_path / "d" / "empty").rmdir()
    (tmp_path / "d" / "3" / "broken.png").write_bytes(b"\x89PNG not really")
    assert f"image {tmp_path}/d/3/broken.png cannot be read" in error(f"folder:{tmp_path}/d", tmp_path)


# --- csv: -------------------------------------------------------------------------------------------


def test_a_csv_without_labels_is_read_for_prediction_only(tmp_path):
    images, _ = fake_digits(10)
    write_kaggle_csv(tmp_path / "test.csv", images, None)
    prepared = prepare(f"csv:{tmp_path}/test.csv", tmp_path, tmp_path / "cache")
    ds = load(prepared.spec, tmp_path)
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert set(ds.labels.tolist()) == {-1}
    assert dict(prepared.notes)["labels"] == "absent: for prediction only"
    with pytest.raises(DataError, match="no label column: a CSV file without labels is for prediction only"):
        build_config(train=f"csv:{tmp_path}/test.csv", device="cpu")


def csv_lines(tmp_path, n=5):
    images, labels = fake_digits(n)
    path = write_kaggle_csv(tmp_path / "d.csv", images, labels)
    return path, path.read_text().splitlines()


@pytest.mark.parametrize(
    ("row", "edit", "expected"),
    [
        (3, lambda cells: cells[:-1], "row 3 (line 4) has 784 cells, expected 785"),
        (3, lambda cells: cells[:3], "row 3 (line 4) has 3 cells, expected 785"),
        (3, lambda cells: [*cells[:-1], ""], "row 3 (line 4), column pixel783: the cell is empty"),
        (2, lambda cells: [*cells, "0"], "Expected 785 fields in line 3, saw 786"),
        (4, lambda cells: [cells[0], "x", *cells[2:]], "row 4 (line 5), column pixel0: 'x' is not a number"),
        (1, lambda cells: ["12", *cells[1:]], "row 1 (line 2): label 12 is outside 0..9; give the number of classes"),
        (5, lambda cells: [*cells[:-1], "256"], "row 5 (line 6), column pixel783: pixel 256 is not a whole number"),
        (2, lambda cells: [cells[0], "-1", *cells[2:]], "row 2 (line 3), column pixel0: pixel -1 is not a whole"),
        (3, lambda cells: [*cells[:-1], "0.5"], "row 3 (line 4), column pixel783: pixel 0.5 is not a whole number"),
    ],
)
def test_bad_csv_cells_are_one_line_errors_naming_file_and_row(tmp_path, row, edit, expected):
    path, lines = csv_lines(tmp_path)
    lines[row] = ",".join(edit(lines[row].split(",")))
    path.write_text("\n".join(lines) + "\n")
    message = error(f"csv:{path}", tmp_path)
    assert message.startswith(str(path))
    assert expected in message


def test_a_csv_of_another_layout_or_none_is_a_one_line_error(tmp_path):
    (tmp_path / "wide.csv").write_text("label," + ",".join(f"pixel{i}" for i in range(100)) + "\n1" + ",0" * 100)
    assert "has 100 pixel columns" in error(f"csv:{tmp_path}/wide.csv", tmp_path)
    assert "no such file" in error(f"csv:{tmp_path}/missing.csv", tmp_path)
    (tmp_path / "empty.csv").write_text("")
    assert "empty.csv is empty or starts with an empty line" in error(f"csv:{tmp_path}/empty.csv", tmp_path)
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\x00\xff")
    assert "binary.csv cannot be read as CSV (UnicodeDecodeError" in error(f"csv:{tmp_path}/binary.csv", tmp_path)


def test_more_classes_are_named_by_their_number(tmp_path):
    images, _ = fake_digits(12)
    write_kaggle_csv(tmp_path / "letters.csv", images, np.arange(12) % 12)
    ds = load(f"csv:{tmp_path}/letters.csv?classes=26", tmp_path)
    assert ds.num_classes == 26
    assert ds.classes[:3] == ("0", "1", "2")
    assert ds.labels.max() == 11


# --- idx: -------------------------------------------------------------------------------------------


def test_an_idx_folder_needs_one_pair_and_prefix_picks_among_several(tmp_path):
    train, train_labels = fake_split("mnist", "train")
    test, test_labels = fake_split("mnist", "test")
    write_idx(tmp_path / "raw" / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "raw" / "train-labels-idx1-ubyte.gz", train_labels.astype(np.uint8))
    write_idx(tmp_path / "raw" / "t10k-images-idx3-ubyte", test)
    write_idx(tmp_path / "raw" / "t10k-labels-idx1-ubyte", test_labels.astype(np.uint8))
    (tmp_path / "raw" / "README").write_text("not IDX")
    message = error(f"idx:{tmp_path}/raw", tmp_path)
    assert "needs one IDX image file and one label file, found t10k-images" in message
    assert "prefix=t10k" in message
    ds = load(f"idx:{tmp_path}/raw?prefix=t10k[10:20]", tmp_path)
    assert torch.equal(ds.images, torch.from_numpy(test[10:20]))
    assert "no such folder" in error(f"idx:{tmp_path}/nowhere", tmp_path)


def test_bad_idx_files_are_one_line_errors_naming_the_file(tmp_path):
    images, labels = fake_digits(10)
    write_idx(tmp_path / "i" / "a-images", images)
    write_idx(tmp_path / "i" / "a-labels", np.append(labels[:-1], 10).astype(np.uint8))
    assert f"{tmp_path}/i/a-labels label 10: 10 is outside 0..9" in error(f"idx:{tmp_path}/i", tmp_path)
    write_idx(tmp_path / "i" / "a-labels", labels[:-1].astype(np.uint8))
    assert "holds 10 images but" in error(f"idx:{tmp_path}/i", tmp_path)
    (tmp_path / "i" / "a-images").write_bytes(gzip.compress(b"\0\0\x08\x03" + bytes(12) + b"\1")[:-6])
    assert f"cannot read {tmp_path}/i/a-images" in error(f"idx:{tmp_path}/i", tmp_path)


# --- the hold-out, slicing, the run's config ----------------------------------------------------------


def test_the_seeded_holdout_partitions_reproducibly():
    train, test = holdout_indices(95, "10", "0", "train"), holdout_indices(95, "10", "0", "test")
    assert len(test) == 9
    assert len(train) == 86
    assert sorted(torch.cat([train, test]).tolist()) == list(range(95))
    assert torch.equal(test, holdout_indices(95, "10", "0", "test"))  # same seed, same draw
    assert not torch.equal(test, holdout_indices(95, "10", "1", "test"))
    with pytest.raises(DataError, match="no training images would be left"):
        holdout_indices(1, "10", "0", "test")


def test_without_test_a_run_holds_out_a_recorded_seeded_tenth_and_has_no_target(tmp_path):
    images, labels = fake_digits(50)
    write_image_folder(tmp_path / "d", images, labels)
    config = build_config(train=f"folder:{tmp_path}/d[:80%]", device="cpu")
    assert config.data.train == f"folder:{tmp_path}/d?split=train,holdout=10,seed=0[:80%]"
    assert config.data.test == f"folder:{tmp_path}/d?split=test,holdout=10,seed=0"
    assert config.data.targets == ()
    train = prepare(config.data.train, tmp_path, tmp_path / "cache")
    test = prepare(config.data.test, tmp_path, tmp_path / "cache")
    assert (train.num_samples, test.num_samples) == (36, 5)  # 80% of the 45 left after holding out 5
    assert dict(test.notes)["holdout"] == "10% drawn with seed 0: 5 of 50 images in test"
    train_set, test_set = load(train.spec, tmp_path), load(test.spec, tmp_path)
    held = holdout_indices(50, "10", "0", "test")
    whole = load(f"folder:{tmp_path}/d", tmp_path)
    assert torch.equal(test_set.images, whole.images[held])
    assert prepare(config.data.test, tmp_path, tmp_path / "cache2").digest == test.digest  # any cache, same digest
    assert train_set.digest != test_set.digest
    given = build_config(train=f"folder:{tmp_path}/d", test="mnist:test", device="cpu")
    assert given.data.train == f"folder:{tmp_path}/d"  # --test given: all of it trains


def test_a_class_mismatch_between_train_and_test_or_target_is_one_line(tmp_path):
    images, labels = fake_digits(20)
    write_image_folder(tmp_path / "digits", images, labels)
    write_image_folder(tmp_path / "few", images[labels < 5], labels[labels < 5])
    build_config(train=f"folder:{tmp_path}/digits", target=["usps:test"], device="cpu")  # the same digits
    with pytest.raises(DataError) as excinfo:
        build_config(train=f"folder:{tmp_path}/digits", test=f"folder:{tmp_path}/few", device="cpu")
    assert "the classes of folder:" in str(excinfo.value)
    assert "(5: 0, 1, 2, ...)" in str(excinfo.value)
    write_kaggle_csv(tmp_path / "x.csv", images, labels)
    with pytest.raises(DataError, match="test on data of the same classes"):
        build_config(train=f"csv:{tmp_path}/x.csv?classes=12", target=["mnist:test"], device="cpu")
