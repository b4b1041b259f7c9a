"""Whether the configured Prefect server lets this process in: one line before a flow starts, rather than
Prefect's retries and traceback when its API auth string (``PREFECT_API_AUTH_STRING``) is missing or
wrong (the team setup's server has one: ``make team``)."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request

from tracking.credentials import refused_line


def auth_string() -> str | None:
    """``$PREFECT_API_AUTH_STRING``, else the one a Prefect profile or settings file gives."""
    if os.environ.get("PREFECT_API_AUTH_STRING"):
        return os.environ["PREFECT_API_AUTH_STRING"]
    from prefect.settings import get_current_settings

    secret = get_current_settings().api.auth_string
    return secret.get_secret_value() if secret is not None else None


def server_problem(api_url: str, timeout_s: float = 10.0) -> str | None:
    """One line saying why the Prefect server at ``api_url`` refuses this process (401), or None. Its
    health check answers without credentials, so this asks for the server's version, which does not."""
    headers = {}
    secret = auth_string()
    if secret:
        headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
    request = urllib.request.Request(f"{api_url.rstrip('/')}/admin/version", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return refused_line("Prefect", api_url, 401, "")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return (
            f"the Prefect server at {api_url} cannot be reached ({reason}); start it (make team) "
            "or unset PREFECT_API_URL"
        )
    return None
