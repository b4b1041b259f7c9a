"""Store writes two runs race on (tracking/races.py): the alias a new model version takes, a logged dataset."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from tasks import export
from tracking import races

POSTGRES_ALIAS_RACE = MlflowException(
    "BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "
    '"registered_model_alias_pk"\nDETAIL:  Key (workspace, name, alias)=(default, digitflow-lenet, candidate) '
    "already exists.\n[SQL: INSERT INTO registered_model_aliases (workspace, name, alias, version) ...]"
)  # what the team setup's second nightly run got, registering a second after the first
SQLITE_ALIAS_RACE = MlflowException(
    "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.name, registered_model_aliases.alias"
)


@pytest.mark.parametrize("race", [POSTGRES_ALIAS_RACE, SQLITE_ALIAS_RACE], ids=["postgresql", "sqlite"])
def test_a_raced_insert_is_tried_again_and_other_errors_are_not(monkeypatch, race):
    monkeypatch.setattr(races.time, "sleep", lambda s: None)
    calls = []

    def once(value):
        calls.append(value)
        if len(calls) == 1:
            raise race
        return value

    assert races.retried_on_race(lambda: once("moved"), table="registered_model_alias") == "moved"
    assert calls == ["moved", "moved"]
    assert not races.raced(race, table="dataset")  # another table's race is not this one's

    def refused():
        raise MlflowException("PERMISSION_DENIED: not allowed")

    with pytest.raises(MlflowException, match="PERMISSION_DENIED"):
        races.retried_on_race(refused, table="registered_model_alias")


def test_a_version_registered_beside_another_runs_still_takes_the_alias(monkeypatch):
    monkeypatch.setattr(races.time, "sleep", lambda s: None)

    class Version:
        version = "2"

    aliases: list[tuple[str, str, str]] = []

    class Client:
        def set_model_version_tag(self, *args):
            pass

        def set_registered_model_alias(self, name, alias, version):
            aliases.append((name, alias, version))
            if len(aliases) == 1:  # the other run inserted the alias row between our look-up and insert
                raise POSTGRES_ALIAS_RACE

    monkeypatch.setattr(export.mlflow, "register_model", lambda uri, name: Version())
    monkeypatch.setattr(export.mlflow, "MlflowClient", Client)
    assert export._register("runs:/x/model", "digitflow-lenet", "candidate", {"test/accuracy": 0.99}) == "2"
    assert aliases == [("digitflow-lenet", "candidate", "2")] * 2
