"""Train an image classifier from a Hydra config: ``python train.py experiment=quickstart [key=value ...]``.

Multi-GPU / multi-process: ``torchrun --nproc_per_node N train.py experiment=... trainer.output_dir=DIR``.
SLURM: ``python -m dcls_vision.launch ...``, ``python train.py -m hydra/launcher=slurm ...`` or ``slurm/train.sbatch``.
A run dir holding ``last.pth`` resumes automatically; exit codes: 0 done, 1 NaN/inf loss, 2 bad config (or no
intact checkpoint to resume from), 3 stopped by a preemption/time-limit signal after saving ``last.pth`` (rerun to
resume), 4 a checkpoint could not be written (full disk, read-only filesystem, quota, permission; the previous
checkpoint is intact: free space and rerun to resume).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from dcls_vision.engine.config import one_line_composition_errors, release_composition_errors
from dcls_vision.engine.schema import register_configs

register_configs()  # configs/*.yaml extend the schemas of dcls_vision/engine/schema.py


def _remove_if_empty(run_dir: Path) -> None:
    """Drop the run dir Hydra made for a config that failed validation (only Hydra's own files in it)."""
    entries = list(run_dir.iterdir()) if run_dir.is_dir() else []
    if all(p.name == ".hydra" or p.suffix == ".log" for p in entries):
        shutil.rmtree(run_dir, ignore_errors=True)


def _train(cfg: DictConfig, multirun: bool) -> None:
    """Train and print the final line; a bad config leaves no run dir behind and propagates to the caller."""
    from dcls_vision.engine import NonFiniteLossError, train
    from dcls_vision.engine.preemption import EXIT_PREEMPTED, Preempted
    from dcls_vision.utils.errors import UserError

    try:
        result = train(cfg)
    except UserError:
        _remove_if_empty(Path(cfg.trainer.output_dir))
        raise
    except NonFiniteLossError as e:
        if multirun:
            raise
        print(f"NonFiniteLossError: {e}", file=sys.stderr)
        sys.exit(1)
    except Preempted as e:
        print(f"Preempted: {e}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    if result.get("rank", 0) == 0:
        if "mAP" in result:  # multi-label data (audio)
            line = f"final: mAP={result['mAP']:.2f} AUC={result['AUC']:.2f} d_prime={result['d_prime']:.3f}"
            if result.get("ema_mAP") is not None:
                line += f" ema_mAP={result['ema_mAP']:.2f}"
            if result.get("best_mAP") is not None:  # None: trainer.eval_only
                line += f" best_mAP={result['best_mAP']:.2f}"
            line += f" run_dir={result['run_dir']}"
        else:
            line = f"final: top1={result['top1']:.2f} top5={result['top5']:.2f}"
            if result.get("ema_top1") is not None:
                line += f" ema_top1={result['ema_top1']:.2f} ema_top5={result['ema_top5']:.2f}"
            if result.get("best_top1") is not None:  # None: trainer.eval_only
                line += f" best_top1={result['best_top1']:.2f}"
            line += f" run_dir={result['run_dir']}"
        print(line, flush=True)


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dcls_vision.utils.errors import run_cli

    release_composition_errors()
    with open_dict(cfg):  # pin the run dir Hydra created (a later ${now:} would differ)
        cfg.trainer.output_dir = HydraConfig.get().runtime.output_dir
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # -m: the launcher reports each job's error
        _train(cfg, multirun=True)
    else:  # the exception must be caught here: Hydra would print a traceback hint and exit 1
        run_cli(lambda: _train(cfg, multirun=False))


if __name__ == "__main__":
    with one_line_composition_errors("ConfigError"):  # a wrong-type/unknown override: one line, exit 2
        main()
