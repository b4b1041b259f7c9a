"""digitflow: the pure-PyTorch core of the pipeline (data, models, training, evaluation, export).

Nothing in this package imports Prefect, MLflow or the ``flows``/``tasks`` layers: functions take
explicit arguments (device, config) and return values or metric dicts. Orchestration and tracking
live one layer up.
"""

__version__ = "0.1.0"
