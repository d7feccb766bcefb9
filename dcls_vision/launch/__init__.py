"""SLURM launching: ``python -m dcls_vision.launch experiment=... nodes=... gpus_per_node=...`` (submitit),
and the preemption guard the trainer uses (:mod:`dcls_vision.launch.preemption`).

Importing this package is cheap (no submitit); :mod:`dcls_vision.launch.submit` holds the launcher.
"""
