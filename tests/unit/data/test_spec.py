"""Spec strings: parsing, canonical text, slice resolution (indices and percentages), errors."""

import pickle
from decimal import Decimal

import pytest

from digitflow.data import DatasetSpec, Percent, parse_spec
from digitflow.errors import DataError


@pytest.mark.parametrize(
    ("text", "canonical", "n", "resolved"),
    [
        ("mnist:train", "mnist:train", 60000, (0, 60000)),
        ("mnist:test[:8000]", "mnist:test[:8000]", 10000, (0, 8000)),
        ("mnist:test[8000:]", "mnist:test[8000:]", 10000, (8000, 10000)),
        ("usps:test[:50%]", "usps:test[:50%]", 2007, (0, 1003)),
        ("usps:test[50%:]", "usps:test[50%:]", 2007, (1003, 2007)),
        ("mnist:test[10%:20%]", "mnist:test[10%:20%]", 10000, (1000, 2000)),
        ("fashion-mnist:test[100:200]", "fashion-mnist:test[100:200]", 10000, (100, 200)),
        ("kmnist:train[-500:]", "kmnist:train[-500:]", 60000, (59500, 60000)),
        ("mnist:test[12.50%:]", "mnist:test[12.5%:]", 10000, (1250, 10000)),
        ("  MNIST:Test[ : 100 ]  ", "mnist:test[:100]", 10000, (0, 100)),
        ("mnist:test[:]", "mnist:test", 10000, (0, 10000)),
        ("mnist:test[0%:100%]", "mnist:test[0%:100%]", 7, (0, 7)),
    ],
)
def test_parse_canonical_and_resolve(text, canonical, n, resolved):
    spec = parse_spec(text)
    assert str(spec) == canonical
    assert parse_spec(str(spec)) == spec
    assert spec.resolve(n) == resolved


def test_fields_and_types():
    spec = parse_spec("usps:test[10:50%]")
    assert spec == DatasetSpec("usps", "test", 10, Percent(Decimal(50)))
    assert isinstance(spec.start, int)
    assert isinstance(spec.stop, Percent)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert hash(spec) == hash(parse_spec("usps:test[10:50.0%]"))
    assert parse_spec(spec) is spec  # a parsed spec passes through


def test_percent_halves_partition_any_size():
    for n in (7, 2007, 10001):
        _, mid = parse_spec("mnist:test[:33.3%]").resolve(n)
        start, _ = parse_spec("mnist:test[33.3%:]").resolve(n)
        assert mid == start


def message(text: str) -> str:
    with pytest.raises(DataError) as excinfo:
        parse_spec(text)
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_unknown_dataset_lists_valid_ones():
    msg = message("mnst:train")
    assert msg.startswith("unknown dataset 'mnst' in spec 'mnst:train'")
    assert "valid datasets: fashion-mnist, kmnist, mnist, usps" in msg
    assert "NAME:SPLIT[START:STOP]" in msg
    assert "usps:test[:50%]" in msg


def test_unknown_split_lists_valid_ones():
    msg = message("mnist:validation")
    assert "unknown split 'validation'" in msg
    assert "valid splits of mnist: test, train" in msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mnist", "malformed dataset spec 'mnist'"),
        ("", "malformed dataset spec ''"),
        ("mnist:test[1:2", "malformed dataset spec"),
        ("mnist:test[1:2:3]", "malformed slice '[1:2:3]'"),
        ("mnist:test[100]", "malformed slice '[100]'"),
        ("mnist:test[a:]", "malformed slice bound 'a'"),
        ("mnist:test[-5%:]", "malformed slice bound '-5%'"),
        ("mnist:test[:150%]", "percentage 150% in spec 'mnist:test[:150%]' is over 100%"),
    ],
)
def test_malformed_specs(text, expected):
    msg = message(text)
    assert expected in msg
    assert "NAME:SPLIT[START:STOP]" in msg


@pytest.mark.parametrize("text", ["mnist:test[8000:8000]", "mnist:test[9000:100]", "usps:test[:0%]"])
def test_empty_slice_names_spec_and_split_size(text):
    with pytest.raises(DataError) as excinfo:
        parse_spec(text).resolve(10000)
    msg = str(excinfo.value)
    assert f"spec '{text}' selects no samples" in msg
    assert "10000 samples" in msg
    assert "\n" not in msg


def test_index_out_of_range_is_an_error_not_a_silent_clamp():
    with pytest.raises(DataError, match=r"index 20000 in spec 'mnist:test\[:20000\]' is out of range.*10000"):
        parse_spec("mnist:test[:20000]").resolve(10000)
    with pytest.raises(DataError, match="out of range"):
        parse_spec("mnist:test[-10001:]").resolve(10000)
