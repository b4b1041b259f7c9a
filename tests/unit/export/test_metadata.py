"""An exported classifier's record (class names, framing) in TorchScript and torch.export files."""

from __future__ import annotations

import json

import pytest
import torch

from digitflow.config import DataConfig
from digitflow.data.registry import DIGIT_CLASSES
from digitflow.errors import ExportError
from digitflow.export.exporters import export_program, export_torchscript
from digitflow.export.metadata import FORMAT, ModelMetadata, default_metadata, run_metadata
from digitflow.models import LeNet
from digitflow.prediction.model import load_scoring_model
from tests.fakedata import fake_digits, write_image_folder

RECORD = ModelMetadata(("cat", "dog", "bird"), "resize")


@pytest.fixture(scope="module")
def three_classes() -> LeNet:
    torch.manual_seed(0)
    return LeNet(num_classes=3).eval()


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning")  # read as a user would
@pytest.mark.parametrize("mode", ["script", "trace"])
def test_a_torchscript_file_carries_its_record_as_an_attribute_any_reader_sees(three_classes, tmp_path, mode):
    path = export_torchscript(three_classes, torch.rand(1, 1, 28, 28), tmp_path / "m.pt", mode=mode, metadata=RECORD)
    loaded = torch.jit.load(str(path))  # plain torch, no digitflow: the attribute is JSON text
    assert json.loads(loaded.digitflow_metadata) == {
        "format": FORMAT,
        "classes": ["cat", "dog", "bird"],
        "frame": "resize",
        "input_shape": [1, 28, 28],
    }
    model = load_scoring_model(path)
    assert (model.metadata, model.assumed) == (RECORD, False)


def test_a_torch_export_file_carries_it_as_an_extra_file(three_classes, tmp_path):
    path = export_program(three_classes, torch.rand(2, 1, 28, 28), tmp_path / "m.pt2", metadata=RECORD)
    extra = {"digitflow_metadata.json": ""}
    torch.export.load(str(path), extra_files=extra)
    assert ModelMetadata.from_json(extra["digitflow_metadata.json"], "m.pt2") == RECORD
    model = load_scoring_model(path)
    assert model.metadata == RECORD
    assert model.module(torch.rand(4, 1, 28, 28)).shape == (4, 3)


def test_a_file_exported_before_the_record_is_taken_for_digits_and_says_so(tmp_path):
    path = export_torchscript(LeNet().eval(), torch.rand(1, 1, 28, 28), tmp_path / "old.pt")  # no metadata
    model = load_scoring_model(path)
    assert model.assumed
    assert model.metadata == ModelMetadata(DIGIT_CLASSES, "mnist-frame", (1, 28, 28))
    assert default_metadata(3).classes == ("0", "1", "2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not json", "unreadable digitflow_metadata record"),
        ('{"format": 1, "frame": "resize", "input_shape": [1, 28, 28]}', "unreadable digitflow_metadata record"),
        ('{"format": 9, "classes": ["a"], "frame": "resize", "input_shape": [1, 28, 28]}', "has format 9"),
        ('{"format": 1, "classes": ["a"], "frame": "stretch", "input_shape": [1, 28, 28]}', "unknown frame"),
    ],
)
def test_a_record_this_version_cannot_read_is_a_one_line_error(text, expected):
    with pytest.raises(ExportError, match=expected) as excinfo:
        ModelMetadata.from_json(text, "m.pt")
    assert str(excinfo.value).startswith("m.pt: ")
    assert "\n" not in str(excinfo.value)


def test_a_runs_record_names_its_training_classes_and_framing(tmp_path):
    assert run_metadata(DataConfig(train="mnist:train")) == ModelMetadata(DIGIT_CLASSES, "mnist-frame")
    assert run_metadata(DataConfig(train="usps:train", target_preprocess="resize")).frame == "resize"
    images, labels = fake_digits(6)
    folder = write_image_folder(tmp_path / "d", images, labels % 3)
    # a folder's images are framed as it says, whatever the targets' framing
    record = run_metadata(
        DataConfig(train=f"folder:{folder}?frame=resize,split=train", target_preprocess="mnist-frame")
    )
    assert record == ModelMetadata(("0", "1", "2"), "resize")
