"""Scale-out plumbing: DDP under Hydra runs and multiruns, per-rank seeds, one directory per job, W&B.

DDP and Hydra (Lightning #11300, lightning-hydra-template #393, hydra #2070)
----------------------------------------------------------------------------
With ``strategy=ddp`` (also what ``strategy=auto`` picks for ``devices>1``) Lightning's
``_SubprocessScriptLauncher`` starts ranks 1..N-1 by re-running the script with ``sys.argv`` plus
``hydra.run.dir=<run.dir>``. Inside a ``--multirun`` that is wrong twice: the child sees ``-m`` and
starts its own sweep (with the Optuna sweeper it even trains other hyper-parameters), and
``hydra.run.dir`` is not the job's directory (a job lives in ``hydra.sweep.dir/<subdir>``). Inside a
joblib/submitit worker ``sys.argv`` and ``__main__`` are the worker's, not the training script's.

:func:`install_ddp_launcher` replaces the command Lightning builds (``_hydra_subprocess_cmd``) by
:func:`ddp_child_command`: a plain single run of the *same job* —
``python -m diffexp.cli.train --config-path=<conf> --config-name=<name> <the job's own overrides>
<its hydra overrides minus launcher/sweeper/sweep ones> hydra.run.dir='<job output dir>'
hydra.output_subdir=null hydra/job_logging=stdout hydra.job.name=<name>_ddp_rank<r> hydra.mode=RUN``. The overrides come from ``HydraConfig.get().overrides``,
which for a sweep job are the concrete values the sweeper chose, so every rank trains the same
hyper-parameters into the same directory, with any launcher and any sweeper.

Jobs that run one after another in one process (Hydra's basic launcher, a reused joblib worker) would
inherit the previous job's ``LOCAL_RANK``/``MASTER_PORT`` (Lightning then believes an external launcher
made the processes and waits for ranks that never come) and its process group; :func:`ddp_job` puts
the environment back and destroys the group after each job.

Processes started by torchrun or SLURM (``srun``) compose Hydra's config independently, so the run
directory cannot contain a per-process timestamp: :func:`shared_run_id` gives them a common id
(``DIFFEXP_RUN_ID``, used by ``conf/hydra/default.yaml``).

Random streams
--------------
Training noise/timesteps are drawn from generators seeded by (seed, "train", global_rank, step,
micro-batch) in :mod:`diffexp.module`, validation noise by (seed, "val", rank, batch): pinned across
epochs. Sampling uses one seed per sample; :func:`diffexp.metrics.compute_metrics` gives rank r of W the
samples r, r + W, ..., so every image is generated exactly once and does not depend on the number of ranks.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENTRY_MODULE = "diffexp.cli.train"
# Environment variables Lightning sets in the launching process (rank 0) for its children.
DDP_ENV_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra overrides that belong to the sweep, not to the job: a child rank runs the job as a plain run.
_SWEEP_ONLY_KEYS = (
    "hydra.launcher", "hydra.sweeper", "hydra.sweep", "hydra.mode",
    "hydra.run.dir", "hydra.output_subdir", "hydra.job.name", "hydra.job.num", "hydra.job.id",
)


# ---- one directory per job ----------------------------------------------------------------------
def shared_run_id(env: dict[str, str] | None = None) -> str | None:
    """An id common to all processes of an externally launched job (None when Lightning launches them).

    ``DIFFEXP_RUN_ID`` when set; under ``srun`` with several tasks ``slurm-<job>.<step>``; under torchrun
    ``torchrun-<rdzv id>`` (``--standalone`` makes a random one; multi-node runs should pass
    ``--rdzv-id``), else ``torchrun-<host>-<agent pid>`` (one node).
    """
    env = os.environ if env is None else env
    if env.get("DIFFEXP_RUN_ID"):
        return env["DIFFEXP_RUN_ID"]
    if env.get("SLURM_JOB_ID") and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")
        return f"slurm-{env['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1") or 1) > 1:
        rid = env["TORCHELASTIC_RUN_ID"]
        if rid and rid != "none":
            return f"torchrun-{rid}"
        import socket

        return f"torchrun-{socket.gethostname()}-{os.getppid()}"
    return None


# ---- the child command --------------------------------------------------------------------------
def _quote(value: str) -> str:
    """A Hydra-quoted string value (paths may hold '=', ',' or spaces)."""
    return "'" + str(value).replace("'", "\\'") + "'"


def _is_sweep_only(override: str) -> bool:
    """``hydra/launcher=joblib``, ``hydra.sweeper.n_trials=4``, ``hydra.sweep.dir=...`` and the like."""
    key = override.lstrip("+~").split("=", 1)[0].split("@", 1)[0].replace("/", ".")
    return any(key == k or key.startswith(k + ".") for k in _SWEEP_ONLY_KEYS)


def ddp_child_command(local_rank: int, hydra_cfg: Any = None, entry_module: str | None = None) -> tuple[list[str], str]:
    """(command, cwd) that starts local rank ``local_rank`` as a plain run of the current Hydra job."""
    if hydra_cfg is None:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    command = [sys.executable, "-m", entry_module or ENTRY_MODULE]
    for source in hydra_cfg.runtime.config_sources:
        if source.schema != "file":
            continue
        if source.provider == "main":
            command.append(f"--config-path={source.path}")
        elif source.provider == "command-line":
            command.append(f"--config-dir={source.path}")
    command.append(f"--config-name={hydra_cfg.job.config_name}")
    command += list(hydra_cfg.overrides.task)
    command += [o for o in hydra_cfg.overrides.hydra if not _is_sweep_only(o)]
    command += [
        f"hydra.run.dir={_quote(hydra_cfg.runtime.output_dir)}",
        "hydra.output_subdir=null",  # rank 0 writes .hydra/ and config.yaml; the others write nothing
        "hydra/job_logging=stdout",  # ... not even a log file: their log lines go to the console
        f"hydra.job.name={hydra_cfg.job.name}_ddp_rank{local_rank}",
        "hydra.mode=RUN",  # never a sweep, even if a config sets hydra.mode=MULTIRUN
    ]
    return command, hydra_cfg.runtime.cwd


def install_ddp_launcher() -> None:
    """Make Lightning's script launcher start DDP ranks with :func:`ddp_child_command` (idempotent)."""
    from diffexp._internals import install_ddp_child_command

    install_ddp_child_command(ddp_child_command)


@contextmanager
def ddp_job():
    """Around one job: afterwards restore the DDP environment variables and destroy the process group
    that this process created, so the next job of a sequential sweep launches its own ranks."""
    saved = {k: os.environ.get(k) for k in DDP_ENV_VARS}
    # Without LOCAL_RANK this process is rank 0 of ranks Lightning starts (or one SLURM task, or a single
    # process): what it leaves behind is its own. With it, torchrun or a parent rank owns the environment.
    owns_environment = "LOCAL_RANK" not in os.environ
    try:
        yield
    finally:
        if owns_environment:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


# ---- W&B run names from the composed config -------------------------------------------------------
# Computed in Python when the logger config leaves them null (no custom resolvers: every process that
# composes conf/ can resolve it, with or without diffexp.launch imported).
TAG_GROUPS = ("data", "model", "schedule", "objective", "sampler", "trainer", "experiment")


def _hydra_cfg():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _is_multirun(hc) -> bool:
    return hc is not None and str(hc.get("mode")) in ("RunMode.MULTIRUN", "MULTIRUN")


def _choices(hc) -> dict:
    return dict(hc.runtime.choices) if hc is not None else {}


def run_name(cfg, hc=None) -> str:
    """``<model>-<schedule>-<objective>-<prediction>`` from the composed choices (``-<job num>`` in a sweep)."""
    hc = hc if hc is not None else _hydra_cfg()
    c = _choices(hc)
    parts = [c.get("model"), c.get("schedule"), c.get("objective"), cfg.get("prediction")]
    name = "-".join(str(p) for p in parts if p not in (None, "null"))
    if _is_multirun(hc) and hc.job.get("num") is not None:
        name += f"-{hc.job.num}"
    return name or "diffexp"


def run_group(cfg, hc=None) -> str:
    """``<task>`` for a single run; ``<task>-<sweep dir name>`` for every job of a multirun (one group per sweep)."""
    hc = hc if hc is not None else _hydra_cfg()
    task = str(cfg.get("task_name") or "train")
    return f"{task}-{Path(str(hc.sweep.dir)).name}" if _is_multirun(hc) else task


def run_tags(cfg, tags=(), hc=None) -> list[str]:
    """``tags`` plus ``group:choice`` for the main config groups and ``prediction:<target>`` (64 chars max)."""
    hc = hc if hc is not None else _hydra_cfg()
    out = [str(t) for t in (tags or [])]
    out += [f"{g}:{c}" for g, c in _choices(hc).items() if g in TAG_GROUPS and c not in (None, "null")]
    if cfg.get("prediction"):
        out.append(f"prediction:{cfg.prediction}")
    return [t[:64] for t in dict.fromkeys(out)]


def external_rank_overrides(env: dict[str, str] | None = None) -> list[str]:
    """Hydra overrides for a rank > 0 started by torchrun or srun (not by Lightning, not by submitit, whose
    tasks run their job in-process): it shares rank 0's directory, so it writes no ``.hydra/`` and no log
    file there (it logs to stdout)."""
    env = os.environ if env is None else env
    if "SUBMITIT_EXECUTOR" in env or "SUBMITIT_FOLDER" in env:
        return []
    external = ("TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1") or 1) > 1) or (
        "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1
    )
    rank = int(env.get("RANK", env.get("SLURM_PROCID", "0")) or 0)
    return ["hydra.output_subdir=null", "hydra/job_logging=stdout"] if external and rank > 0 else []


def prepare_launch() -> None:
    """Call once at import of a Hydra entry point, before Hydra composes the config."""
    rid = shared_run_id()
    if rid and not os.environ.get("DIFFEXP_RUN_ID"):
        os.environ["DIFFEXP_RUN_ID"] = rid
    if Path(sys.argv[0]).stem in ("train", "diffexp-train"):
        sys.argv += [o for o in external_rank_overrides() if o not in sys.argv]
    install_ddp_launcher()


# ---- W&B: config at init, run id in the checkpoint, finish per job -----------------------------
def _wandb_loggers(loggers) -> list:
    return [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]


WANDB_CKPT_KEY = "wandb"


def wandb_id_from_checkpoint(ckpt_path: str | os.PathLike | None) -> str | None:
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    import torch

    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001  (a corrupt checkpoint is reported by the resume code, not here)
        return None
    entry = ckpt.get(WANDB_CKPT_KEY) if isinstance(ckpt, dict) else None
    return entry.get("id") if isinstance(entry, dict) else None


def setup_loggers(cfg, loggers: list, ckpt_path: str | os.PathLike | None = None) -> list:
    """Before any logger starts its run: give W&B the full resolved config at ``wandb.init`` (offline runs
    otherwise lose it, Lightning #20571), a name/group/tags from the config choices where the logger config
    leaves them null (:func:`run_name`, :func:`run_group`, :func:`run_tags`) and, when resuming from a
    checkpoint that recorded a W&B run, that run's id with ``resume="allow"``. Returns callbacks to add to
    the Trainer."""
    wandb_loggers = _wandb_loggers(loggers)
    if not wandb_loggers:
        return []
    from omegaconf import OmegaConf

    from diffexp._internals import wandb_init_kwargs, wandb_set_id, wandb_set_name

    config = OmegaConf.to_container(cfg, resolve=True)
    run_id = wandb_id_from_checkpoint(ckpt_path)
    for logger in wandb_loggers:
        init = wandb_init_kwargs(logger)
        init.setdefault("config", config)
        if not init.get("name"):
            init["name"] = run_name(cfg)
            wandb_set_name(logger, init["name"])
        if not init.get("group"):
            init["group"] = run_group(cfg)
        init["tags"] = run_tags(cfg, init.get("tags"))
        if run_id and not init.get("id"):
            init.update(id=run_id, resume="allow")
            wandb_set_id(logger, run_id)
    return [WandbRunIdCallback()]


def _wandb_run_id_callback_base():
    import lightning as L

    return L.Callback


class WandbRunIdCallback(_wandb_run_id_callback_base()):
    """Stores the W&B run id (and project/entity) in every checkpoint: ``checkpoint["wandb"]``."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        from diffexp._internals import wandb_project, wandb_run_id

        for logger in _wandb_loggers(trainer.loggers):
            run = logger.experiment if trainer.is_global_zero else None
            run_id = getattr(run, "id", None) or wandb_run_id(logger)
            if isinstance(run_id, str):
                checkpoint[WANDB_CKPT_KEY] = {
                    "id": run_id,
                    "project": getattr(run, "project", None) or wandb_project(logger),
                    "entity": getattr(run, "entity", None),
                }
                return


def finish_loggers(loggers: list, is_global_zero: bool) -> None:
    """End this job's W&B run (multirun jobs must not merge, wandb #1314) and print the sync command."""
    wandb_loggers = _wandb_loggers(loggers)
    if not wandb_loggers:
        return
    if not is_global_zero:  # other ranks hold no W&B run (rank_zero_experiment)
        return
    import wandb

    from diffexp._internals import wandb_offline, wandb_run_if_started

    run_dirs = []
    for logger in wandb_loggers:
        run = wandb_run_if_started(logger)
        if run is not None and isinstance(getattr(run, "dir", None), str):
            run_dirs.append((Path(run.dir).parent, wandb_offline(logger) or bool(getattr(run, "offline", False))))
    wandb.finish()
    for run_dir, offline in run_dirs:
        if offline:
            print(f"W&B offline run saved; upload with: wandb sync {run_dir}")
