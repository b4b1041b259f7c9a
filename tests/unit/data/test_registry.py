"""The registry's copy of torchvision's dataset metadata matches the installed torchvision."""

from torchvision import datasets as tvd

from digitflow.data import registry


def test_idx_datasets_match_torchvision_classes():
    for name, cls in (("mnist", tvd.MNIST), ("fashion-mnist", tvd.FashionMNIST), ("kmnist", tvd.KMNIST)):
        ours = registry.TORCHVISION_IDX[name]
        assert ours.class_name == cls.__name__
        assert list(ours.mirrors) == list(cls.mirrors), name
        assert [tuple(r) for r in ours.resources] == [tuple(r) for r in cls.resources], name
        assert list(ours.classes) == list(cls.classes), name


def test_usps_matches_torchvision_split_list():
    assert {split: list(v) for split, v in registry.TORCHVISION_USPS.items()} == {
        split: list(v) for split, v in tvd.USPS.split_list.items()
    }


def test_registry_does_not_import_torchvision():
    """Every command reads the registry before it parses its options: torchvision's import (its models,
    ops and torch._dynamo) would cost seconds there."""
    import subprocess
    import sys

    code = "import sys, digitflow.data.registry; print(any(m.startswith('torchvision') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
