"""Prefect tasks: each calls one ``digitflow`` function, adds retries/caching, and logs to MLflow."""
