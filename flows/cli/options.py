"""Options and plumbing every ``digitflow`` command shares: parsing helpers, option groups (data
source, device and seed, optimizer and schedule, resume), and running a flow in-process with one-line
errors and Ctrl-C handling. A command module adds its own options and calls these."""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from digitflow.config import AdversarialTrainingConfig, DataConfig, RobustnessConfig, TrainConfig
from digitflow.data import parse_spec
from digitflow.errors import CheckpointError, ConfigError, DataError, DigitflowError
from flows.interrupt import RunSignals, start_temporary_server
from tasks.logs import quiet_expected_errors

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line and where to read more, without the usage
    block (which, for ``digitflow run``, is a dozen lines in front of the one that matters)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def literal(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"[0.9, 0.99]"`` -> [0.9, 0.99], ``"True"`` -> True, anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def key_values(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` options -> a dict of Python literals (ConfigError, one line, if malformed)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} takes KEY=VALUE, got {item!r} (e.g. {option} lr=0.01)")
        out[key.strip()] = literal(value.strip())
    return out


def param_groups(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Repeated ``PREFIX:KEY=VALUE`` options -> ``{prefix: {key: value}}``."""
    groups: dict[str, dict[str, Any]] = {}
    for item in items or ():
        prefix, sep, rest = item.partition(":")
        if not sep or not prefix:
            raise ConfigError(f"--param-group takes PREFIX:KEY=VALUE, got {item!r} (e.g. classifier:lr=0.001)")
        groups.setdefault(prefix, {}).update(key_values([rest], "--param-group PREFIX:"))
    return groups


def dataset_spec(text: str) -> str:
    """argparse type: validate a dataset spec early, so a typo fails before anything starts."""
    try:
        return str(parse_spec(text))
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_data_source_options(group: argparse._ArgumentGroup, *, train_help: str | None = None) -> None:
    """``--train``, ``--data-dir``, ``--cache-dir``, ``--offline``."""
    d = DataConfig()
    group.add_argument(
        "--train",
        type=dataset_spec,
        default=d.train,
        metavar="SPEC",
        help=train_help or f"training split (default {d.train})",
    )
    group.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help=f"where the official files are, torchvision layout (default $DIGITFLOW_DATA_DIR or ./{d.data_dir})",
    )
    group.add_argument(
        "--cache-dir", default=d.cache_dir, metavar="DIR", help=f"transformed-tensor cache (default {d.cache_dir})"
    )
    group.add_argument("--offline", action="store_true", help="never download; use the files already in the data dir")


def add_seed_and_device_options(group: argparse._ArgumentGroup) -> None:
    """``--seed``, ``--device``."""
    t = TrainConfig()
    group.add_argument(
        "--seed", type=int, default=t.seed, help=f"same seed, same metrics on the same device (default {t.seed})"
    )
    group.add_argument(
        "--device", default=t.device, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps (default auto)"
    )


def add_optimizer_options(
    group: argparse._ArgumentGroup, *, default_optimizer: str, opt_defaults: str, param_group_example: str
) -> None:
    """``--optimizer``, ``--opt``, ``--lr``, ``--param-group``, ``--scheduler``, ``--sched``.

    ``opt_defaults`` completes the sentence "adds to the defaults, which are torch's except ...".
    """
    group.add_argument(
        "--optimizer",
        default=default_optimizer,
        metavar="NAME",
        help=f"any torch.optim class: SGD, Adam, AdamW, LBFGS, ... (default {default_optimizer})",
    )
    group.add_argument(
        "--opt",
        action="append",
        metavar="KEY=VALUE",
        help=f"optimizer keyword argument, repeatable; adds to the defaults, which are torch's except {opt_defaults}",
    )
    group.add_argument("--lr", type=float, default=None, help="shortcut for --opt lr=LR")
    group.add_argument(
        "--param-group",
        action="append",
        metavar="PREFIX:KEY=VALUE",
        help=f"options for parameters whose name starts with PREFIX ({param_group_example}), repeatable",
    )


def add_scheduler_options(group: argparse._ArgumentGroup, *, default_scheduler: str | None) -> None:
    """``--scheduler``, ``--sched``."""
    group.add_argument(
        "--scheduler",
        default=default_scheduler,
        metavar="NAME",
        help="any torch.optim.lr_scheduler class, stepped per epoch; T_max/total_iters/total_steps "
        f"default to the epochs; 'none' for a constant rate (default {default_scheduler or 'none'})",
    )
    group.add_argument("--sched", action="append", metavar="KEY=VALUE", help="scheduler keyword argument, repeatable")


def add_resume_options(group: argparse._ArgumentGroup, *, checkpoint_default: str) -> None:
    """``--resume``, ``--checkpoint``."""
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run with the same options from its last checkpoint",
    )
    group.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help=f"checkpoint file written after every epoch and read by --resume (default: {checkpoint_default})",
    )


def add_adversarial_training_options(group: argparse._ArgumentGroup) -> None:
    """``--adv-train``, ``--adv-eps``, ``--adv-steps``, ``--adv-ramp-epochs``."""
    a = AdversarialTrainingConfig()
    group.add_argument(
        "--adv-train",
        choices=["fgsm-rs", "pgd"],
        default=None,
        help="adversarial training: each batch replaced by its attacked images; fgsm-rs: FGSM from a random "
        "start, step 1.25 x eps (Wong et al. 2020), pgd: --adv-steps steps of 2.5 x eps / steps from a random "
        "start (Madry et al. 2018) (default: off)",
    )
    group.add_argument(
        "--adv-eps",
        type=float,
        default=None,
        metavar="EPS",
        help=f"L-infinity epsilon on the pixel scale [0, 1] for adversarial training (default {a.eps:g})",
    )
    group.add_argument(
        "--adv-steps",
        type=int,
        default=None,
        metavar="N",
        help=f"PGD steps per batch with --adv-train pgd (default {a.steps})",
    )
    group.add_argument(
        "--adv-ramp-epochs",
        type=float,
        default=None,
        metavar="EPOCHS",
        help=f"grow epsilon linearly from 0 over the first EPOCHS epochs (default {a.ramp_epochs:g})",
    )


def add_robustness_options(group: argparse._ArgumentGroup) -> None:
    """``--attack``, ``--epsilons``, ``--pgd-steps``, ``--attack-images``."""
    r = RobustnessConfig()
    group.add_argument(
        "--attack",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"attacks on the held-out split after training: fgsm, pgd, or none (default {' '.join(r.attacks)})",
    )
    group.add_argument(
        "--epsilons",
        type=float,
        nargs="+",
        default=None,
        metavar="EPS",
        help=f"L-infinity epsilons on the pixel scale [0, 1] (default {' '.join(f'{e:g}' for e in r.epsilons)})",
    )
    group.add_argument(
        "--pgd-steps",
        type=int,
        default=None,
        metavar="N",
        help=f"PGD steps, each 2.5 x eps / N, from a random start (default {r.pgd_steps})",
    )
    group.add_argument(
        "--attack-images",
        type=int,
        default=None,
        metavar="N",
        help=f"attack the first N held-out images (default {r.num_images})",
    )


def adversarial_params(args: argparse.Namespace) -> dict[str, Any]:
    """The robustness and adversarial-training options as flow parameters (None: the config's default)."""
    return {
        "attack": args.attack,
        "epsilons": args.epsilons,
        "pgd_steps": args.pgd_steps,
        "attack_images": args.attack_images,
        "adv_train": args.adv_train,
        "adv_eps": args.adv_eps,
        "adv_steps": args.adv_steps,
        "adv_ramp_epochs": args.adv_ramp_epochs,
    }


def optimizer_params(args: argparse.Namespace) -> dict[str, Any]:
    """The optimizer and scheduler options as flow parameters. ``--opt`` and ``--lr`` add to the
    optimizer's defaults, which the flow fills in (for the device and the optimizer)."""
    optimizer_kwargs = key_values(args.opt, "--opt")
    if args.lr is not None:
        optimizer_kwargs["lr"] = args.lr
    params: dict[str, Any] = {
        "optimizer": args.optimizer,
        "optimizer_kwargs": optimizer_kwargs or None,
        "param_groups": param_groups(args.param_group) or None,
    }
    if hasattr(args, "scheduler"):
        params["scheduler"] = args.scheduler
        params["scheduler_kwargs"] = key_values(args.sched, "--sched") or None
    return params


def run_flow(
    argv: Sequence[str],
    epochs: int,
    start: Callable[[], Any],
    *,
    finished: str,
    summary_lines: Callable[[Any], list[str]],
    where: Callable[[], str] | None = None,
) -> int:
    """Run a flow in this process: ``start()`` imports the flow (Prefect and MLflow load only once the
    options are valid) and calls it. Expected errors end as one line on stderr; Ctrl-C / SIGTERM as one
    line saying how to ``--resume`` (flows/interrupt.py), exit 130 / 143. Prints the summary at the end.
    ``where()`` says how far the flow got, for that line (default: the epochs of its training)."""
    signals = RunSignals(argv, epochs, where=where)
    try:
        with signals:
            quiet_expected_errors(full_in_log=False)  # the CLI prints an expected error in full, last
            signals.replace_prefect_sigterm_handler()
            start_temporary_server()
            summary = start()
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"digitflow: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DigitflowError as exc:
        print(f"digitflow: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BaseException as exc:
        if not signals.interrupted(exc):
            raise
        signals.report()
        return signals.exit_code
    print("\n".join(["", finished, *("  " + line for line in summary_lines(summary))]))
    return 0


def setup_environment() -> None:
    """Process-wide settings every command wants before Prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
