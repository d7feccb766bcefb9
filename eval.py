"""Robustness evaluation of a checkpoint (thesis Table 2.5): ``python eval.py checkpoint=<run>/best.pth ...``.

Benchmarks: ``benchmarks=[val,c,cbar,a,r,sketch]`` with ``<key>.root=<folder>`` (see configs/eval.yaml);
multi-process: ``torchrun --nproc_per_node N eval.py ...``. Results are written after every split; running the same
command again resumes (in ``output_dir``, or with the default output_dir the newest unfinished run of the same
command under outputs/eval/). Exit codes: 0 done (benchmarks that could not run
are listed in the report), 2 bad config or checkpoint, 3 none of the requested benchmarks could run, 4 a results file
could not be written (full disk, read-only filesystem, quota, permission; the saved results are intact).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from dcls_vision.engine.config import one_line_composition_errors, release_composition_errors
from dcls_vision.robustness.schema import register_eval_config

register_eval_config()  # configs/eval.yaml extends dcls_vision/robustness/schema.py


def _remove_if_empty(out_dir: Path) -> None:
    """Drop the dir Hydra made for a config that failed validation (only Hydra's own files in it)."""
    entries = list(out_dir.iterdir()) if out_dir.is_dir() else []
    if all(p.name == ".hydra" or p.suffix == ".log" for p in entries):
        shutil.rmtree(out_dir, ignore_errors=True)


def _evaluate(cfg: DictConfig, resume_search: Path | None) -> None:
    """Run the eval; a bad config leaves no output dir behind and propagates to :func:`run_cli`."""
    from dcls_vision.robustness import run_eval
    from dcls_vision.utils.errors import UserError

    try:
        result = run_eval(cfg, resume_search=resume_search)
    except UserError:
        _remove_if_empty(Path(cfg.output_dir))
        raise
    if not result["evaluated"]:
        if result["rank"] == 0:
            print("eval: none of the requested benchmarks could run (see the messages above)", file=sys.stderr)
        sys.exit(3)


@hydra.main(config_path="configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dcls_vision.utils.errors import run_cli

    release_composition_errors()
    hydra_cfg = HydraConfig.get()
    with open_dict(cfg):  # pin the dir Hydra created (a later ${now:} would differ)
        cfg.output_dir = hydra_cfg.runtime.output_dir
    default_dir = not any(o.split("=", 1)[0].lstrip("+~") == "output_dir" for o in hydra_cfg.overrides.task)
    # the default dir is new each time: resume the newest unfinished run of the same command beside it
    resume_search = Path(cfg.output_dir).parent if default_dir else None
    run_cli(lambda: _evaluate(cfg, resume_search))  # caught inside the task: Hydra would exit 1 with a traceback


if __name__ == "__main__":
    with one_line_composition_errors("EvalConfigError"):  # a wrong-type/unknown override: one line, exit 2
        main()
