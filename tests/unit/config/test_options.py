"""The option tables: one definition per option, plain data that imports no torch."""

import subprocess
import sys

import pytest

from digitflow.config.options import GAN_OPTIONS, RUN_OPTIONS, SWEEP_FIXED_OPTIONS, Option, complete, defaults
from digitflow.errors import ConfigError


@pytest.mark.parametrize("options", [RUN_OPTIONS, GAN_OPTIONS], ids=["run", "gan"])
def test_each_option_is_defined_once_with_help(options):
    names = [o.name for o in options]
    assert len(names) == len(set(names))
    flags = [o.cli_flag for o in options if o.cli_flag]
    assert len(flags) == len(set(flags))
    assert all(o.help for o in options), [o.name for o in options if not o.help]


def test_flag_follows_the_name_unless_given():
    assert Option("adv_ramp_epochs", float).cli_flag == "--adv-ramp-epochs"
    assert Option("optimizer_kwargs", dict, flag="--opt").cli_flag == "--opt"
    assert Option("internal", str, flag=None).cli_flag is None


def test_complete_fills_defaults_and_names_an_unknown_option_in_one_line():
    params = complete(RUN_OPTIONS, {"epochs": 3}, "digitflow run")
    assert params["epochs"] == 3
    assert params["train"] == defaults(RUN_OPTIONS)["train"] == "mnist:train"
    with pytest.raises(ConfigError, match="digitflow run has no option epoch; its options: ") as raised:
        complete(RUN_OPTIONS, {"epoch": 3}, "digitflow run")
    assert "\n" not in str(raised.value)


def test_a_sweep_fixes_every_run_option_but_its_own():
    assert {o.name for o in RUN_OPTIONS} - {o.name for o in SWEEP_FIXED_OPTIONS} == {
        "experiment",
        "resume",
        "checkpoint",
        "nproc",
    }


def test_the_option_tables_import_no_torch():
    # digitflow --help reads them: they must stay cheap to import
    code = (
        "import sys, digitflow.config.options\n"
        "print(sorted(m for m in ('torch', 'prefect', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
