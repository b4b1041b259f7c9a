"""What a run shows while it goes: expected errors as one line in Prefect's log (logs.py), progress bars
or log lines for long work (progress.py). Never imports tasks or flows."""
