"""Config checks of the diffusion parts: the process and its prediction target, the ``schedule`` group (ddpm only),
the objective on the process (and its weighting against the target, see :mod:`diffexp.validation`'s docstring),
and every configured sampler. :func:`diffexp.validation.validate_config` calls them; each appends one message
per problem to ``errors``."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffexp.config_values import accepts, is_int, select
from diffexp.errors import ConfigError
from diffexp.samplers.recipe import is_recipe_placeholder


def sampler_nodes(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    nodes = []
    if isinstance(cfg.get("sampler"), DictConfig):
        nodes.append(("sampler", cfg.sampler))
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and isinstance(node.get("sampler"), DictConfig):
            nodes.append((f"callbacks.{name}.sampler", node.sampler))
    return nodes


def check_sampler_configs(cfg: DictConfig, process, errors: list[str], allow_recipe: bool = False) -> None:
    """Instantiate every configured sampler (its ``__init__`` rejects unknown option values) and ask it
    whether it can run on ``process`` (``Sampler.check``, e.g. steps <= T for the index-based samplers).
    ``sampler=recipe`` (the checkpoint's own sampler) only means something to tools that load a checkpoint
    (``allow_recipe``); a training run must name the sampler it stores as its recipe."""
    T = process.num_timesteps if process is not None else None
    seen = set()
    for key, node in sampler_nodes(cfg):
        ident = OmegaConf.to_yaml(node)
        if ident in seen:  # callbacks.sample.sampler is usually ${sampler}
            continue
        seen.add(ident)
        steps = node.get("steps")
        if steps is not None and (not is_int(steps) or steps < 1):
            errors.append(f"{key}.steps={steps}: must be a positive integer")
            continue
        if is_recipe_placeholder(node):  # sampler=recipe: checked once the checkpoint's sampler replaces it
            if not allow_recipe:
                errors.append(f"{key}=recipe: the checkpoint's own sampler, for sample.py and evaluate.py only; "
                              "a training run names its sampler (e.g. sampler=ddim, sampler=dpmpp_2m)")
            continue
        try:
            try:
                sampler = instantiate(node)
            except InstantiationException as wrapped:  # Hydra wraps what the sampler's __init__ raised
                cause = wrapped.__cause__
                raise (cause if isinstance(cause, (ValueError, TypeError)) else wrapped) from None
            if process is not None:
                sampler.check(process)
                sampler.nfe(T)
        except (ValueError, TypeError) as e:
            option = getattr(e, "option", None)
            if option is None and steps is not None and "steps" in str(e):
                option = "steps"
            where = f"{key}.{option}={node.get(option)}" if option else f"{key} ({node.get('_target_', '?')})"
            detail = f" with schedule.num_timesteps={T}" if T is not None and option == "steps" else ""
            errors.append(f"{where}{detail}: {e}")


def check_samplers(cfg: DictConfig, process=None) -> list[str]:
    """The problems of every sampler config in ``cfg`` (``sampler`` and callbacks' samplers), for tools
    that check a sampler against a checkpoint's process (sample.py, evaluate.py); ``process=None``: the
    options alone."""
    errors: list[str] = []
    check_sampler_configs(cfg, process, errors, allow_recipe=True)
    return errors


def check_objective(cfg: DictConfig, schedule, errors: list[str]) -> None:
    obj = cfg.get("objective")
    if not isinstance(obj, DictConfig):
        return
    target = str(obj.get("_target_", ""))
    weighting = obj.get("weighting")
    if weighting is not None and target and not accepts(target, "weighting"):
        errors.append(f"objective.weighting={weighting}: {target.rsplit('.', 1)[-1]} has no loss weighting "
                      "(weightings apply to objective=simple, hybrid and flow_matching)")
        return
    prediction = cfg.get("prediction")
    if weighting in ("min_snr", "p2") and prediction in ("x0", "v") and schedule is not None \
            and getattr(schedule, "has_zero_terminal_snr", False):
        errors.append(
            f"objective.weighting={weighting} with prediction={prediction} and schedule.zero_terminal_snr=true: "
            f"the {weighting} weight of the {prediction}-loss is w_eps*SNR{'/(1+SNR)' if prediction == 'v' else ''} = 0 "
            "at t=T, the step every sampler starts from, so that prediction is never trained; use "
            "objective.weighting=uniform, or a schedule without zero terminal SNR"
        )


def check_objective_on_process(cfg: DictConfig, process, errors: list[str]) -> None:
    """The objective (and its time sampler) is defined on the process (``objective.check``: e.g. the discrete
    ELBO needs ddpm, flow matching a continuous family), and EDM preconditioning comes with prediction=x0."""
    from diffexp.preconditioning import PRECONDITIONINGS

    precondition = select(cfg, "module.precondition", "none")
    if precondition not in PRECONDITIONINGS:
        errors.append(f"module.precondition={precondition}: valid: {list(PRECONDITIONINGS)}")
    elif precondition != "none" and cfg.get("prediction") != "x0":
        errors.append(f"module.precondition={precondition} wraps the network so that it predicts x0; set prediction=x0 "
                      f"(got prediction={cfg.get('prediction')})")
    obj = cfg.get("objective")
    if process is None or not isinstance(obj, DictConfig) or any(e.startswith("objective.") for e in errors):
        return
    try:
        objective = instantiate(obj)
    except Exception as e:  # noqa: BLE001  (Hydra wraps the objective's ValueError)
        errors.append(f"objective ({obj.get('_target_', '?')}): {e.__cause__ or e}")
        return
    if hasattr(objective, "check"):
        try:
            objective.check(process)
        except ValueError as e:
            errors.append(f"objective ({str(obj.get('_target_', '?')).rsplit('.', 1)[-1]}) with process={process.name}: {e}")


def check_process(cfg: DictConfig, schedule, prediction, errors: list[str]):
    """Build the process (``process`` group; none = ddpm over ``schedule``) and check the prediction target
    is defined on it (velocity needs a continuous family). Returns the process, or None."""
    from diffexp.build import build_process, is_ddpm
    from diffexp.process import PREDICTION_TARGETS

    if is_ddpm(cfg) and schedule is None:
        return None
    try:
        process = build_process(cfg, schedule)
    except (ConfigError, ValueError, TypeError) as e:
        errors.append(str(e))
        return None
    if prediction in PREDICTION_TARGETS:
        try:
            process.check_prediction(prediction)
        except ValueError as e:
            errors.append(f"prediction={prediction}: {e}")
    return process


def hydra_node(cfg: DictConfig):
    """The Hydra settings of the run that composed ``cfg``: its ``hydra`` key (configs composed with
    ``return_hydra_config``), else those of the running ``@hydra.main`` app, else None (a hand-made config)."""
    node = cfg.get("hydra") if isinstance(cfg, DictConfig) else None
    if node is not None:
        return node
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def check_schedule_overrides(cfg: DictConfig, errors: list[str]) -> None:
    """``schedule`` (the beta_t of ``diffexp.schedules``) only feeds ``process=ddpm``; the continuous families
    (vp_sde, subvp_sde, ve, edm, flow) define their own alpha(t), sigma(t) and never read it. A ``schedule=...`` or
    ``schedule.*`` override given with such a process would be silently ignored: rejected. The ``schedule: linear``
    that train.yaml composes by default is not an override (Hydra's task overrides are what the user typed)."""
    from diffexp.build import is_ddpm

    hydra = hydra_node(cfg)
    if is_ddpm(cfg) or hydra is None:
        return
    try:
        task = [str(o) for o in hydra.overrides.task]
        process = hydra.runtime.choices.get("process")
    except Exception:  # noqa: BLE001 -- a partial hydra node: nothing to compare against
        return
    keys = {o: o.split("=", 1)[0].lstrip("+") for o in task if not o.startswith("~")}  # ~schedule: not a setting
    found = [o for o, k in keys.items() if k == "schedule" or k.startswith(("schedule.", "schedule@"))]
    if found:
        process = process or str(cfg.process.get("_target_", "?")).rsplit(".", 1)[-1]
        errors.append(f"{', '.join(found)} with process={process}: `schedule` only applies to process=ddpm (the "
                      f"{process} process defines its own alpha(t), sigma(t); its parameters are process.*, see "
                      f"docs/processes.md); drop the schedule override or use process=ddpm")
