"""The AOTInductor package's refusals, without compiling (the compile itself, tens of seconds, is tested
with the C++ consumer in tests/test_cpp_consumer.py, which loads the same package from C++)."""

import pytest
import torch

from digitflow.errors import ConfigError, ExportError
from digitflow.export.aoti import compiler_missing, export_aoti
from digitflow.export.exporters import export_program, load_export
from digitflow.models import LeNet


def test_the_package_name_says_which_loader_it_takes(tmp_path):
    with pytest.raises(ConfigError, match=r"must end in '\.aoti\.pt2'"):
        export_aoti(LeNet(), torch.rand(1, 1, 28, 28), tmp_path / "lenet.pt2")
    with pytest.raises(ConfigError, match="names an AOTInductor package"):
        export_program(LeNet(), torch.rand(1, 1, 28, 28), tmp_path / "lenet.aoti.pt2")
    with pytest.raises(ConfigError, match=r"'\.aoti\.pt2' \(AOTInductor\)"):
        load_export(tmp_path / "lenet.onnx")


def test_without_a_compiler_the_package_is_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler++")
    assert "'no-such-compiler++' is not found" in (compiler_missing() or "")
    with pytest.raises(ExportError) as info:
        export_aoti(LeNet(), torch.rand(1, 1, 28, 28), tmp_path / "lenet.aoti.pt2")
    assert "\n" not in str(info.value)
    assert "AOTInductor needs a C++ compiler" in str(info.value)
    assert not list(tmp_path.iterdir())
