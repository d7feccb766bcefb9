"""What a resumed run does with a config that differs from its checkpoint's (``trainer.resume_schedule``).

A checkpoint stores the resolved config it was trained with. On resume the trainer restores the weights, the
optimizer state (its param groups' hyper-parameters included: ``optim.weight_decay``, betas, ... come from the
checkpoint, as ``torch.optim.Optimizer.load_state_dict`` does) and, with ``trainer.resume_schedule=checkpoint``
(the default), the LR scheduler's state too: the exact continuation of the run as it was started, even where the
new config asks for another schedule (a run started with ``trainer.epochs=1`` and continued with
``trainer.epochs=2`` trains epoch 2 at the end of the 1-epoch schedule, i.e. at ``sched.min_lr``).
``trainer.resume_schedule=config`` instead builds the schedule from the new config and moves it to the resumed
step, as timm's ``train.py --resume`` with a new ``--epochs`` does (timm/train.py: the scheduler is created from the
arguments after ``resume_checkpoint`` and stepped to ``start_epoch``). Every other key takes effect as the new
config says. The log names the keys that differ and which of these rules applies to them.
"""

from __future__ import annotations

from typing import Any

RESUME_SCHEDULES = ("checkpoint", "config")
# Keys that differ between invocations of one run without changing what it trains: where it writes, how it
# resumes and checkpoints, how it logs (tools/report.py does not group runs by them either).
BOOKKEEPING_KEYS = (
    "trainer.output_dir",
    "trainer.resume",
    "trainer.auto_resume",
    "trainer.resume_schedule",
    "trainer.max_epochs_per_run",
    "trainer.keep_last",
    "trainer.ckpt_interval_steps",
)
BOOKKEEPING_PREFIXES = ("logger.",)
SCHEDULE_PREFIXES = ("trainer.epochs", "sched.", "optim.lr")  # what the LR schedule is built from


def _dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_dotted(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(saved: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (checkpoint's value, this config's value)}`` for the keys that differ, bookkeeping left out."""
    if not saved:
        return {}
    old, new = _dotted(saved), _dotted(current)
    keys = sorted(set(old) | set(new))
    return {
        k: (old.get(k, "<absent>"), new.get(k, "<absent>"))
        for k in keys
        if old.get(k, "<absent>") != new.get(k, "<absent>")
        and k not in BOOKKEEPING_KEYS
        and not k.startswith(BOOKKEEPING_PREFIXES)
    }


def schedule_changes(saved: dict[str, Any] | None, rebuilt: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The scheduler settings (timm ``Scheduler.state_dict``: ``t_initial``, ``lr_min``, ``base_values``, ...)
    in which the schedule this config builds differs from the checkpoint's; a grouped scheduler's parts
    (``weights``, ``positions``) are compared field by field, named ``part.field``."""
    if not saved:
        return {}
    changes = {}
    for k, v in rebuilt.items():
        if k.startswith("_") or k not in saved or saved[k] == v:  # torch's private counters say nothing new
            continue
        if isinstance(v, dict) and isinstance(saved[k], dict):  # optim.positions: one scheduler per part
            changes.update({f"{k}.{sub}": pair for sub, pair in schedule_changes(saved[k], v).items()})
        else:
            changes[k] = (saved[k], v)
    return changes


def _pairs(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())


def resume_config_notes(
    keys: dict[str, tuple[Any, Any]], schedule: dict[str, tuple[Any, Any]], mode: str, step: int, lr: float
) -> list[str]:
    """Log lines: which keys differ from the checkpoint's config and what the trainer does about each kind."""
    lines = []
    if keys:
        lines.append(f"config differs from the checkpoint's: {_pairs(keys)}")
        kept = [k for k in keys if k.startswith("optim.") and not k.startswith(SCHEDULE_PREFIXES)]
        if kept:
            lines.append(
                f"  {', '.join(kept)}: the optimizer's param groups are restored from the checkpoint (its values "
                "stay); the other keys take effect as this config says"
            )
    if schedule and mode == "checkpoint":
        lines.append(
            f"  trainer.resume_schedule=checkpoint: the LR schedule continues as the checkpoint's, not this "
            f"config's ({_pairs(schedule)}); lr now {lr:.3e} at global step {step}; pass "
            "trainer.resume_schedule=config to rebuild it from this config at this step"
        )
    elif schedule:
        lines.append(
            f"  trainer.resume_schedule=config: the LR schedule is rebuilt from this config ({_pairs(schedule)}) "
            f"and continues at global step {step}; lr now {lr:.3e}"
        )
    elif keys:
        lines.append("  the LR schedule this config builds is the checkpoint's: it continues unchanged")
    return lines


__all__ = [
    "BOOKKEEPING_KEYS",
    "BOOKKEEPING_PREFIXES",
    "RESUME_SCHEDULES",
    "config_changes",
    "resume_config_notes",
    "schedule_changes",
]
