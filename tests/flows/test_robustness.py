"""Robustness evaluation and adversarial training through the flow and the CLI: metrics, figures and
params in MLflow, the summary, ``--attack none``, and one-line errors for bad epsilons and step counts."""

from __future__ import annotations

import mlflow
import pytest

from digitflow.config import AdversarialTrainingConfig, RobustnessConfig, robustness_defaults
from digitflow.errors import ConfigError
from digitflow.params.run import build_config
from flows.cli import build_parser
from flows.cli.run import flow_parameters
from tests.fakedata import fake_data_dir
from tests.flows.test_pipeline import runs_by_name, tiny_run


def test_adversarial_training_and_robustness_end_to_end(tmp_path, monkeypatch, mlflow_store, prefect_server):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    summary = tiny_run(
        tmp_path,
        data_dir,
        adv_train="fgsm-rs",
        adv_eps=0.2,
        adv_ramp_epochs=1,
        target=[],
        epsilons=None,  # the default robustness evaluation
        pgd_steps=None,
    )

    client = mlflow.MlflowClient()
    parent = client.get_run(summary.run_id)
    assert "adv-train=fgsm-rs adv-eps=0.2 adv-ramp-epochs=1 " in parent.info.run_name
    params = parent.data.params
    assert params["train.adversarial.mode"] == "fgsm-rs"
    assert params["train.adversarial.eps"] == "0.2"
    assert params["robustness.epsilons"] == str(list(RobustnessConfig().epsilons))
    headline = parent.data.metrics["robust/pgd/accuracy_eps10"]
    assert "robust/pgd/accuracy_eps10_stderr" in parent.data.metrics  # its standard error beside it

    children = runs_by_name(summary.run_id)
    train = children["train"]
    assert train.data.tags["train.step"] == "eager"
    ramp = [m.value for m in client.get_metric_history(train.info.run_id, "train/adv_eps")]
    assert ramp == [0.2, 0.2]  # full epsilon at the end of the first (ramp) epoch
    robust = children["robustness"]
    assert robust.info.status == "FINISHED"
    steps = [round(e * 100) for e in RobustnessConfig().epsilons]
    for attack in ("fgsm", "pgd"):
        history = client.get_metric_history(robust.info.run_id, f"robust/{attack}/accuracy")
        assert sorted(m.step for m in history) == steps
    pgd = {m.step: m.value for m in client.get_metric_history(robust.info.run_id, "robust/pgd/accuracy")}
    fgsm = {m.step: m.value for m in client.get_metric_history(robust.info.run_id, "robust/fgsm/accuracy")}
    assert all(pgd[s] <= fgsm[s] for s in steps)
    assert pgd[10] == headline
    assert pgd[0] == parent.data.metrics["test/accuracy"]  # epsilon 0 is the clean accuracy
    artifacts = {a.path for a in client.list_artifacts(robust.info.run_id, "robustness")}
    assert artifacts == {"robustness/accuracy_vs_epsilon.png", "robustness/adversarial_examples.png"}
    assert summary.robust_accuracy["robust/pgd/accuracy_eps10"] == headline
    lines = "\n".join(summary.lines())
    assert f"accuracy under PGD: {pgd[0]:.4f} / " in lines
    assert "at eps 0 / 0.05 / 0.1 / 0.15 / 0.2 / 0.25 / 0.3" in lines


def test_attack_none_skips_the_robustness_task(tmp_path, monkeypatch, mlflow_store, prefect_server):
    data_dir = fake_data_dir(tmp_path, monkeypatch)
    summary = tiny_run(tmp_path, data_dir, attack=["none"], target=[], epochs=1, adv_train="pgd", adv_steps=2)

    parent = mlflow.MlflowClient().get_run(summary.run_id)
    assert parent.data.params["robustness.attacks"] == "[]"
    assert parent.data.params["train.adversarial.steps"] == "2"
    assert not any(key.startswith("robust/") for key in parent.data.metrics)
    assert "robustness" not in runs_by_name(summary.run_id)
    assert summary.robust_accuracy == {}
    assert "accuracy under" not in "\n".join(summary.lines())


def options(*argv: str):
    params = flow_parameters(build_parser().parse_args(["run", *argv]))
    return build_config(**{k: v for k, v in params.items() if k != "experiment"})


def test_options_reach_the_configs():
    c = options()
    assert c.robustness == robustness_defaults("cpu")  # the tests train on the CPU
    assert c.train.adversarial == AdversarialTrainingConfig()
    c = options("--attack", "pgd", "--epsilons", "0.3", "0", "0.1", "--pgd-steps", "40", "--attack-images", "500")
    assert c.robustness == RobustnessConfig(attacks=("pgd",), epsilons=(0.0, 0.1, 0.3), pgd_steps=40, num_images=500)
    assert options("--attack", "none").robustness.attacks == ()
    c = options("--adv-train", "pgd", "--adv-eps", "0.3", "--adv-steps", "10", "--adv-ramp-epochs", "2")
    assert c.train.adversarial == AdversarialTrainingConfig(mode="pgd", eps=0.3, steps=10, ramp_epochs=2)
    assert options("--adv-train", "fgsm-rs").train.adversarial.mode == "fgsm-rs"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epsilons", "0.1", "1.5"], "an attack epsilon (--epsilons) must be in [0, 1] (pixel scale), got 1.5"),
        (["--epsilons", "-0.1"], "must be in [0, 1] (pixel scale), got -0.1"),
        (["--pgd-steps", "0"], "PGD needs at least 1 step (--pgd-steps), got 0"),
        (["--adv-train", "pgd", "--adv-eps", "2"], "the adversarial training epsilon (--adv-eps) must be in [0, 1]"),
        (["--adv-train", "pgd", "--adv-steps", "0"], "PGD needs at least 1 step (--adv-steps), got 0"),
        (["--adv-eps", "0.1"], "--adv-eps need --adv-train fgsm-rs or pgd"),
        (["--adv-train", "fgsm-rs", "--adv-steps", "3"], "--adv-steps is for --adv-train pgd"),
        (["--attack", "cw"], "unknown attack 'cw'; valid: fgsm, pgd, none"),
        (["--attack", "none", "pgd"], "--attack none cannot be combined with pgd"),
        (["--attack-images", "0"], "--attack-images must be at least 1"),
    ],
)
def test_bad_adversarial_options_are_config_errors(argv, message):
    with pytest.raises(ConfigError) as raised:
        options(*argv)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--adv-train", "fgsm-rs", "--adv-eps", "1.5"], "(--adv-eps) must be in [0, 1] (pixel scale), got 1.5"),
        (["--pgd-steps", "0"], "PGD needs at least 1 step (--pgd-steps), got 0"),
    ],
)
def test_bad_epsilon_or_steps_is_one_line_before_anything_starts(args, message, command):
    code, _, stderr = command("run", *args)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr
