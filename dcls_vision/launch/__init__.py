"""SLURM launching: ``python -m dcls_vision.launch experiment=... nodes=... gpus_per_node=...`` (submitit).

Importing this package is cheap (no submitit). Modules, low to high: :mod:`.options` (``key=value`` options),
:mod:`.slurm` (sbatch checks, queueing, waiting), :mod:`.jobs` (training jobs) and :mod:`.downstream`
(mmdet/mmseg jobs), :mod:`.cli` (the command line); :mod:`.hydra_launcher` is Hydra's ``hydra/launcher=slurm`` callback.
"""
