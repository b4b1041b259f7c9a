"""Credentials for authenticated servers (the team setup, ``make team``): where they come from, and
keeping them out of everything a run prints or logs.

They come from the environment (``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``,
``PREFECT_API_AUTH_STRING``, with ``MLFLOW_TRACKING_URI`` and ``PREFECT_API_URL``), or from the file
``$DIGITFLOW_CREDENTIALS`` names (``KEY=VALUE`` lines, e.g. the ``users/<name>.env`` that
``make team-user`` writes outside the repository), never from the command line. A password written
into the tracking URI (``http://alice:secret@host:5000``) is moved out of it into the two variables
MLflow's client reads, so the URI every summary, log line and ``run.json`` shows has none.

Pure standard library: the ``digitflow`` command loads these before anything heavy.
"""

from __future__ import annotations

import base64
import os
import urllib.parse
from collections.abc import MutableMapping
from pathlib import Path

from digitflow.errors import DigitflowError

CREDENTIALS_ENV = "DIGITFLOW_CREDENTIALS"
# what a credentials file may set (anything else in it is ignored)
KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "PREFECT_API_URL",
    "PREFECT_API_AUTH_STRING",
)


class CredentialsError(DigitflowError):
    """The credentials file cannot be used: one line."""


def load_credentials(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set what ``$DIGITFLOW_CREDENTIALS``'s file holds (variables already set win), then move a
    password out of ``MLFLOW_TRACKING_URI`` (:func:`split_uri_credentials`)."""
    path = environ.get(CREDENTIALS_ENV)
    if path:
        file = Path(path).expanduser()
        try:
            text = file.read_text()
        except OSError as exc:
            raise CredentialsError(
                f"{CREDENTIALS_ENV}={path}: cannot read it ({exc.strerror}); give the credentials file "
                "make team-user wrote, or unset it"
            ) from None
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() in KEYS and not line.lstrip().startswith("#"):
                environ.setdefault(key.strip(), value.strip())
    split_uri_credentials(environ)


def split_uri_credentials(environ: MutableMapping[str, str] = os.environ) -> None:
    """``MLFLOW_TRACKING_URI=http://user:pass@host`` -> ``http://host``, with ``user`` and ``pass`` in
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (unless those are set already)."""
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return
    if parts.username:
        environ.setdefault("MLFLOW_TRACKING_USERNAME", urllib.parse.unquote(parts.username))
    if parts.password is not None:
        environ.setdefault("MLFLOW_TRACKING_PASSWORD", urllib.parse.unquote(parts.password))
    environ["MLFLOW_TRACKING_URI"] = redact(uri, keep_user=False)


def redact(uri: str, keep_user: bool = True) -> str:
    """``uri`` without its password (``http://alice:***@host`` with ``keep_user``, else ``http://host``);
    any other text as it is."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    if keep_user and parts.username:
        host = f"{parts.username}{':***' if parts.password is not None else ''}@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def mlflow_auth_header(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The Authorization header MLflow's client sends with these settings (none without them)."""
    user, password = environ.get("MLFLOW_TRACKING_USERNAME"), environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {environ['MLFLOW_TRACKING_TOKEN']}"}
    return {}


def refused_line(server: str, url: str, status: int, what: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """One line for a server that refused a request (401: no or wrong credentials; 403: no permission),
    naming what to set, never a value."""
    if server == "MLflow":
        user = environ.get("MLFLOW_TRACKING_USERNAME")
        if status == 403:
            return (
                f"the MLflow tracking server at {url} refused user {user} {what} (403: no permission); "
                "an admin grants it (make team-user NAME=... grants the flows' experiments and models)"
            )
        if user and environ.get("MLFLOW_TRACKING_PASSWORD"):
            return (
                f"the MLflow tracking server at {url} refused the password of user {user} (401); "
                f"check MLFLOW_TRACKING_PASSWORD (or the file {CREDENTIALS_ENV} names)"
            )
        return (
            f"the MLflow tracking server at {url} needs a user and password (401): set MLFLOW_TRACKING_USERNAME "
            f"and MLFLOW_TRACKING_PASSWORD, or {CREDENTIALS_ENV}=FILE (make team-user writes one)"
        )
    if environ.get("PREFECT_API_AUTH_STRING"):
        return f"the Prefect server at {url} refused the API auth string (401); check PREFECT_API_AUTH_STRING"
    return (
        f"the Prefect server at {url} needs its API auth string (401): set PREFECT_API_AUTH_STRING, or "
        f"{CREDENTIALS_ENV}=FILE (make team-user writes one)"
    )
