"""`python distill.py teacher=CKPT method=progressive|consistency_distillation|consistency_training`.

The student is a DiffusionModule trained by :func:`diffexp.cli.train.train` (same trainer, callbacks, EMA,
checkpoints, resume, DDP) with a distillation objective of :mod:`diffexp.distill.objectives`. Data, model,
schedule/process and conditioning (and, unless ``guidance_scale`` is given, the recipe's CFG scale) come from the
teacher's checkpoint; the consistency methods wrap the
network as f = c_skip x + c_out F (``module.precondition=consistency``, ``prediction=x0``) and sample with
``sampler=consistency``; progressive distillation runs its rounds here, one run directory and checkpoint
each (``round-<N>/``), and its students sample with DDIM (``spacing=trailing``) on their own grids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import diffexp  # noqa: F401  (torchvision shim before lightning)
from diffexp.cli.errors import enable_debug_tracebacks, user_errors
from diffexp.config import CONFIG_DIR, setup_environment
from diffexp.launch import ddp_job, prepare_launch
from diffexp.logs import route_to_run_log, say

setup_environment()
enable_debug_tracebacks()
prepare_launch()

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from diffexp.guidance.setup import recipe_guidance_scale  # noqa: E402
from diffexp.validation import ConfigError  # noqa: E402

METHODS = ("progressive", "consistency_distillation", "consistency_training")
FROM_TEACHER = ("data", "model", "schedule", "process", "conditional", "latent")


def student_config(cfg: DictConfig, teacher_cfg: dict | None) -> DictConfig:
    """The training config of the student: the teacher's data/model/process, the method's objective and wrapper."""
    method = cfg.distill.get("method")
    if method not in METHODS:
        raise ConfigError(f"method={method}: valid: {list(METHODS)}")
    cfg = cfg.copy()
    with open_dict(cfg):
        if teacher_cfg is not None:
            for key in FROM_TEACHER:
                if key in teacher_cfg:
                    cfg[key] = teacher_cfg[key]
                elif key in cfg and key in ("process",):
                    cfg[key] = {"_target_": "diffexp.process.DiffusionProcess"}  # pre-family checkpoints: ddpm
            if "prediction" in teacher_cfg and method == "progressive":
                cfg.prediction = teacher_cfg["prediction"]
        if cfg.get("guidance_scale") is None:  # null: the teacher recipe's CFG scale (1.0 when it stores none); the
            # student learns both the conditional and the null-label predictions, so it samples at the same w
            cfg.guidance_scale = recipe_guidance_scale(teacher_cfg, f"teacher={cfg.get('teacher')}")
        cfg.objective = cfg.distill.objective
        cfg.module.precondition = cfg.distill.precondition
        if method != "progressive":
            cfg.prediction = "x0"  # f estimates x_0
            _more_sample_grids(cfg)
    return cfg


def _more_sample_grids(cfg: DictConfig) -> None:
    """Consistency models: besides the run's sampler (``sampler.steps``), sample grids at each of
    ``distill.grid_steps`` (1 and 4 NFE) with the same callback settings (keys samples/consistency-<n>)."""
    callbacks = cfg.get("callbacks")
    if not callbacks or "sample" not in callbacks:
        return
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    for steps in cfg.distill.get("grid_steps") or []:
        if steps == sampler.get("steps"):
            continue
        node = OmegaConf.to_container(callbacks.sample, resolve=True)
        node["sampler"] = {**sampler, "steps": int(steps)}
        callbacks[f"sample_{steps}nfe"] = node


def init_from(teacher_path: str | None, method: str):
    """``prepare_module`` for :func:`train`: copy the teacher's network into the student (and its EMA and the
    consistency target). For the consistency methods the teacher's network becomes F inside the wrapper."""
    if teacher_path is None:
        return None

    def prepare(module) -> None:
        from diffexp.build import load_module
        from diffexp.preconditioning import EDMPreconditioned

        src = load_module(teacher_path).sampling_net(ema=True)
        dst = module.net
        if method != "progressive":
            src = src.net if isinstance(src, EDMPreconditioned) else src
            dst = dst.net
        try:
            dst.load_state_dict(src.state_dict())
        except RuntimeError as e:
            raise ConfigError(f"init_from_teacher=true: the student's network does not match the teacher's ({e}); "
                              "set init_from_teacher=false") from e
        for copy_ in (module.ema.net if module.ema is not None else None, getattr(module.objective, "target_net", None)):
            if copy_ is not None:
                copy_.load_state_dict(module.net.state_dict())

    return prepare


def distill(cfg: DictConfig) -> dict:
    from diffexp.checkpoint import CHECKPOINT_KEY, read_checkpoint
    from diffexp.cli.train import train

    method = cfg.distill.get("method")
    teacher = cfg.get("teacher")
    teacher_cfg = None
    if teacher is None and method != "consistency_training":
        raise ConfigError(f"teacher=null: method={method} needs a teacher checkpoint (teacher=<path of train.py's .ckpt>)")
    if teacher is not None:
        teacher_cfg = read_checkpoint(teacher, "cpu")[CHECKPOINT_KEY]["config"]
    init = cfg.get("init_from_teacher", True)
    if method != "progressive":
        return train(student_config(cfg, teacher_cfg), init_from(teacher if init else None, method))
    # progressive: rounds N = start/2, start/4, …, end; each round's last.ckpt teaches the next
    start, end = int(cfg.distill.start_steps), int(cfg.distill.end_steps)
    if start < 2 or end < 1 or end >= start or (start & (start - 1)) or (end & (end - 1)):
        raise ConfigError(f"distill.start_steps={start}, distill.end_steps={end}: need powers of two with end < start")
    out_dir, results, steps = Path(cfg.paths.output_dir), {}, start // 2
    while steps >= end:
        round_cfg = student_config(cfg, teacher_cfg)
        with open_dict(round_cfg):
            round_cfg.objective.teacher = str(teacher)
            round_cfg.distill.objective.teacher = str(teacher)
            round_cfg.teacher = str(teacher)
            round_cfg.objective.student_steps = steps
            round_cfg.paths.output_dir = str(out_dir / f"round-{steps}")
            round_cfg.sampler = {"_target_": "diffexp.samplers.DDIMSampler", "steps": steps, "eta": 0.0,
                                 "spacing": "trailing", "clip_denoised": True}
        say(f"[diffexp] progressive distillation: {2 * steps} teacher steps -> {steps} student steps")
        results[steps] = train(round_cfg, init_from(str(teacher) if init or steps < start // 2 else None, method))
        teacher = out_dir / f"round-{steps}" / "checkpoints" / "last.ckpt"
        steps //= 2
    (out_dir / "rounds.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="distill")
def _main(cfg: DictConfig) -> None:
    route_to_run_log()
    with user_errors("distill"), ddp_job():
        distill(cfg)


def main() -> None:
    # method=X reads better next to teacher=CKPT; it is the config group choice distill=X
    sys.argv = [f"distill={a.split('=', 1)[1]}" if a.startswith("method=") else a for a in sys.argv]
    _main()
