"""Prefect flows (the pipeline) and the ``digitflow`` command line."""
