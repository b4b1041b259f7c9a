"""What a parent run is called in the MLflow UI: the options that differ from the defaults, training
options first, then model, training split and epochs."""

from __future__ import annotations

from typing import Any

from digitflow.config import RunConfig, flatten
from digitflow.models.factory import model_label

_NAME_KEYS = ("train.", "data.test", "data.targets", "data.target_preprocess", "export.mode")
_NAME_MAX = 240  # MLflow keeps run names up to 250 characters


def parent_run_name(config: RunConfig, defaults: RunConfig | None = None) -> str:
    """What a pipeline run did, for the runs list: ``lr=0.01 augment=none · LeNet mnist:test[:8000] epochs=1``.

    Each option that changes what is trained or tested and differs from ``defaults`` (what the run
    would have had with no option given: the defaults for its training data, device and optimizer;
    ``RunConfig()`` if None), in short ``key=value`` form (training options first), then the model,
    the training split and the epochs. The differences lead because the runs list shows only the first
    twenty-odd characters of a name: that is where two runs must already differ.
    """
    defaults = defaults or RunConfig()
    ours, usual = _name_items(config), _name_items(defaults)
    changed = [f"{key}={value}" for key, value in ours.items() if key != "epochs" and usual.get(key) != value]
    if config.train.optimizer.name != RunConfig().train.optimizer.name and "optimizer" not in "".join(changed):
        changed.insert(0, f"optimizer={config.train.optimizer.name}")
    if config.adapt.method is not None:  # domain adaptation first: it changes the most
        changed.insert(0, f"adapt={config.adapt.method}({config.adapt.target})")
    what = f"{model_label(config.train.model)} {config.data.train} epochs={config.train.epochs}"
    name = " ".join(changed) + " · " + what if changed else what
    return name if len(name) <= _NAME_MAX else name[: _NAME_MAX - 1] + "…"


def _name_items(config: RunConfig) -> dict[str, str]:
    """The config's result-changing settings as short keys (``lr``, ``scheduler``, ``augment``) -> text."""
    augment = config.train.augment
    chosen = [n for n in ("affine", "elastic") if getattr(augment, n)] + list(augment.extra)
    items: dict[str, str] = {}
    flat = flatten(config)
    for key in sorted(flat, key=lambda k: not k.startswith("train.")):  # stable: training options first
        value = flat[key]
        if not key.startswith(_NAME_KEYS) or key in ("train.device", "train.model") or value == {}:  # {}: no kwargs
            continue
        if key.startswith("train.augment.") and "augment" not in items:  # which ones, as one item
            items["augment"] = "+".join(chosen) or "none"
        if key not in ("train.augment.affine", "train.augment.elastic", "train.augment.extra"):
            items[_short_key(key)] = _short_value(value)
    return items


def _short_key(key: str) -> str:
    for prefix, short in (
        ("train.adversarial.mode", "adv-train"),  # the CLI's names: adv-eps, adv-steps, adv-ramp-epochs
        ("train.adversarial.ramp_epochs", "adv-ramp-epochs"),
        ("train.adversarial.relative_step", "adv-relative-step"),
        ("train.adversarial.", "adv-"),
        ("train.optimizer.kwargs.", ""),
        ("train.optimizer.param_groups.", ""),
        ("train.scheduler.kwargs.", "sched."),
        ("train.augment.", ""),
        ("train.", ""),
        ("data.targets", "target"),
        ("data.target_preprocess", "target-preprocess"),
        ("data.", ""),
        ("export.mode", "export"),
    ):
        if key.startswith(prefix):
            key = short + key[len(prefix) :]
            break
    return key.removesuffix(".name")


def _short_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(map(_short_value, value)) or "none"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
