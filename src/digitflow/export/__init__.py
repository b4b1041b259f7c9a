"""Export: TorchScript and torch.export files, verified in a torch-only process (verifier.py), timed."""
