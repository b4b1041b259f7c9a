"""Flow parameters -> validated configs: the defaults that follow the device, the dataset and the optimizer.

Pure Python over :mod:`digitflow.config` (no Prefect, no MLflow), shared by the CLI, the flows, the tasks
and the deployments, so every entry point resolves a run's settings the same way."""
