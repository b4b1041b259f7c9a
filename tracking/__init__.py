"""MLflow plumbing shared by the tasks and flows: the store (store.py), runs (runs.py), run names
(naming.py), logging that survives a lost tracking server (runlog.py), UI links (ui.py), and the
comparison of runs (comparison.py). Never imports tasks or flows."""
