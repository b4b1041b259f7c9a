"""Training: the step protocol and the one epoch loop (step.py, loop.py), the steps that plug into it
(classifier, adversarial, DANN, GAN, data-parallel, CUDA graphs), optimizers, augmentation, checkpoints."""
