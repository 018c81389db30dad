"""Fine-tuning a pre-trained model on a target catalog, with one of five strategies.

``fine_tune(config, checkpoint_path, pretrained=...)`` is the library entry that
``scripts/fine_tune.py`` calls, the counterpart of ``recbole_fork.run.pre_train``:

* ``from_scratch``: the same architecture trained on the target only (no weights loaded).
* ``full``: every weight loaded from the checkpoint and trainable.
* ``frozen_embeddings``: the item encoder's tables (text token tables, item-ID table) frozen;
  adapter, backbone and position embeddings trainable.
* ``progressive``: embeddings frozen; stage i = 1..n trains only the top i backbone layers for
  ``progressive_epochs_per_stage`` epochs each; the last stage trains everything for the
  remaining epochs.
* ``ewc``: everything trainable, plus ``ewc_lambda / 2 * sum_i F_i (theta_i - theta*_i)^2``
  with theta* the pre-trained weights and F the diagonal Fisher estimated on ``ewc_samples``
  batches of the pre-training dataset.

Only weights that came from the checkpoint are ever frozen or anchored by EWC: item-ID rows
drawn fresh for a new catalog (``recbole_fork.transfer``) stay trainable in every strategy,
since frozen random vectors would carry no information.

Catalog transfer (re-encoding the target's text by string into the checkpoint's vocabulary,
unseen pieces dropped) is ``recbole_fork.transfer``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from recbole_fork.checkpoint import CheckpointError, load_checkpoint
from recbole_fork.config import (
    PROPERTIES,
    ConfigError,
    ForkConfig,
    build_config,
    load_config_file,
    parse_overrides,
    resolve_config_path,
)
from recbole_fork.trainer import CHECKPOINT_FORMAT, SeqTrainer, run_params

logger = logging.getLogger(__name__)

STRATEGIES = ("from_scratch", "full", "frozen_embeddings", "progressive", "ewc")
# Keys of a model's defaults file that do not change the network's shape or function.
_NOT_ARCHITECTURE = {"loss_type", "temperature", "hidden_dropout_prob", "attn_dropout_prob"}
_ENCODER_KEYS = ("item_encoder", "text_fields", "text_embedding_size", "max_seq_length")
_FISHER_SEED = 505  # any constant distinct from the trainer's own seed offsets

StageHook = Callable[[str, "Stage", nn.Module], None]


class FineTuneError(ValueError):
    """A user-caused fine-tuning error (one-line message naming the thing and the fix)."""


# ----- configuration ----------------------------------------------------------------------


def architecture_keys(model: str) -> list[str]:
    """Config keys that fix a model's architecture: its defaults file's keys (minus loss,
    temperature and dropout) plus the item encoder's keys and ``max_seq_length``."""
    path = PROPERTIES / "model" / f"{model}.yaml"
    keys = list((yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {})
    keys = [k for k in keys if k not in _NOT_ARCHITECTURE]
    return sorted(set(keys) | set(_ENCODER_KEYS))


def _architecture(cfg: Mapping[str, Any]) -> dict[str, Any]:
    model = str(cfg["model"])
    out = {"model": model}
    for key in architecture_keys(model):
        if key in cfg and cfg[key] is not None:
            out[key] = cfg[key]
    return out


def read_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a pre-training checkpoint and check it is one ``SeqTrainer`` wrote.

    Raises:
        CheckpointError: missing, unreadable, or not a fork model's training checkpoint.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    if ckpt.get("format") != CHECKPOINT_FORMAT or "config" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path} was not written by pre_train for a fork model "
            f"(format {ckpt.get('format')!r}); pass a checkpoint of scripts/pre_train.py"
        )
    return ckpt


def fine_tune_config(
    source: str | Path | Mapping[str, Any],
    dataset: str,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    *,
    pretrained: str | Path | None = None,
    pretrain_config: str | Path | None = None,
) -> ForkConfig:
    """The fine-tuning run's config: architecture from the checkpoint, the rest from ``source``.

    Layers, later wins: the architecture keys (``architecture_keys``) of the checkpoint's
    config (or of ``pretrain_config`` without a checkpoint) < ``source`` < ``overrides``;
    ``dataset`` is the target. A size set differently in ``source`` or ``overrides`` is
    caught when the weights are loaded (``transfer.TransferError``).

    Args:
        source: the fine-tuning config file (``confs/fine_tune/full.yaml``) or a dict.
        dataset: the target dataset's name (a folder under ``data_path``).
        overrides: ``--set`` items or a dict.
        pretrained: the pre-trained checkpoint (its config fixes the architecture).
        pretrain_config: the pre-training config; with a checkpoint it is only checked
            against the checkpoint's config.

    Raises:
        CheckpointError: missing or foreign checkpoint.
        ConfigError: bad config file or key, ``pretrain_config`` disagreeing with the
            checkpoint on a model or architecture key, or ``source`` / ``overrides`` naming
            another model than the checkpoint's.
    """
    base: dict[str, Any] = {}
    where = "config"
    if isinstance(source, Mapping):
        user = dict(source)
    else:
        where = str(resolve_config_path(source))
        user = load_config_file(where)
    pre = build_config(pretrain_config).to_dict() if pretrain_config is not None else None
    if pretrained is not None:
        ckpt_config = read_pretrained(pretrained)["config"]
        base = _architecture(ckpt_config)
        if pre is not None:
            theirs = _architecture(pre)
            # The model first: another model's keys would differ anyway, less clearly.
            for key in ["model", *sorted((set(base) | set(theirs)) - {"model"})]:
                if theirs.get(key) != base.get(key):
                    raise ConfigError(
                        f"pre-train config {pretrain_config} sets {key}={theirs.get(key)!r} but "
                        f"checkpoint {pretrained} was trained with {key}={base.get(key)!r}; "
                        "pass the pre-training's own config or leave -p out"
                    )
    elif pre is not None:
        base = _architecture(pre)
    asked = {**user, **parse_overrides(overrides)}.get("model")
    if base and asked and asked != base["model"]:
        origin = f"checkpoint {pretrained}" if pretrained is not None else f"{pretrain_config}"
        raise ConfigError(
            f"{origin} holds a {base['model']} model, but the config sets {asked}; "
            "fine-tune the pre-trained model (drop `model` from the config)"
        )
    try:
        return build_config({**base, **user}, overrides, dataset=dataset)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config:", f"{where}:", 1)) from None


def check_dataset(config: Any, name: str | None = None) -> Path:
    """The ``.inter`` file of dataset ``name`` (default: the config's) under ``data_path``.

    Raises:
        FineTuneError: no such dataset; the message lists the datasets found there.
    """
    name = str(name or config["dataset"])
    # A resolved Config's data_path already ends in its own dataset's folder.
    path = Path(str(config["data_path"]))
    root = path.parent if path.name == str(config["dataset"]) else path
    inter = root / name / f"{name}.inter"
    if not inter.is_file():
        found = (
            sorted(d.name for d in root.iterdir() if (d / f"{d.name}.inter").is_file())
            if root.is_dir()
            else []
        )
        raise FineTuneError(
            f"dataset {name!r} not found: no {inter}; datasets under {root}: {found} "
            "(check the dataset name and --data-path)"
        )
    return inter


def fine_tune_run_name(config: ForkConfig, strategy: str) -> str:
    """``sasrecx-d64-l2-text-amazon-beauty-progressive-s42`` (or the config's ``run_name``)."""
    from recbole_fork.run import default_run_name

    if config["run_name"]:
        return str(config["run_name"])
    name, suffix = default_run_name(config), f"-s{config['seed']}"
    stem = name[: -len(suffix)] if name.endswith(suffix) else name
    return f"{stem}-{strategy}{suffix}"


# ----- stages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One stretch of epochs with a fixed set of frozen parameters.

    Attributes:
        index: 0-based position in the plan.
        name: ``all``, ``frozen_embeddings`` or ``top_<i>`` (progressive).
        start_epoch, end_epoch: the epochs ``[start_epoch, end_epoch)`` it covers.
        frozen: sorted full names of the frozen parameters.
    """

    index: int
    name: str
    start_epoch: int
    end_epoch: int
    frozen: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (checkpoints and JSON artifacts)."""
        return {**asdict(self), "frozen": list(self.frozen)}


def backbone_layers(model: nn.Module) -> list[str]:
    """Parameter-name prefixes of the backbone's layers, bottom first (``backbone.blocks.0``).

    Raises:
        FineTuneError: the backbone has no ``blocks`` or ``layers`` list.
    """
    for attr in ("blocks", "layers"):
        layers = getattr(model.backbone, attr, None)
        if isinstance(layers, nn.ModuleList):
            return [f"backbone.{attr}.{i}" for i in range(len(layers))]
    raise FineTuneError(
        f"progressive fine-tuning needs a backbone with a `blocks` or `layers` list; "
        f"{type(model.backbone).__name__} has neither"
    )


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name.startswith(p + ".") for p in prefixes)


def plan_stages(
    model: nn.Module,
    strategy: str,
    *,
    epochs: int,
    epochs_per_stage: int = 1,
    loaded: Iterable[str] = (),
) -> list[Stage]:
    """The stages of a fine-tuning run.

    Args:
        model: the model to fine-tune (a ``ForkSeqModel``).
        strategy: one of ``STRATEGIES``.
        epochs: the run's total epochs.
        epochs_per_stage: progressive: epochs of each partial stage.
        loaded: names of the parameters loaded from the checkpoint (only these are frozen).

    Raises:
        FineTuneError: unknown strategy, or too few epochs for the progressive stages.
    """
    if strategy not in STRATEGIES:
        raise FineTuneError(f"unknown fine_tune_strategy {strategy!r}; valid: {list(STRATEGIES)}")
    loaded = set(loaded)
    embeddings = set(model.embedding_parameter_names()) & loaded
    if strategy in ("from_scratch", "full", "ewc"):
        return [Stage(0, "all", 0, epochs, ())]
    if strategy == "frozen_embeddings":
        return [Stage(0, "frozen_embeddings", 0, epochs, tuple(sorted(embeddings)))]
    layers = backbone_layers(model)
    n, per = len(layers), int(epochs_per_stage)
    if per < 1 or epochs <= n * per:
        raise FineTuneError(
            f"progressive: {n} layer stages x progressive_epochs_per_stage={per} leave no epoch "
            f"for the final stage with epochs={epochs}; set epochs > {n * max(per, 1)}"
        )
    stages = []
    for i in range(1, n + 1):
        top = layers[n - i :]
        frozen = tuple(sorted(k for k in loaded if not _under(k, top)))
        stages.append(Stage(i - 1, f"top_{i}", (i - 1) * per, i * per, frozen))
    stages.append(Stage(n, "all", n * per, epochs, ()))
    return stages


def trainable_parameters(model: nn.Module) -> int:
    """Number of scalar parameters with ``requires_grad`` (never negative)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def apply_stage(model: nn.Module, stage: Stage) -> int:
    """Freeze ``stage.frozen``, unfreeze every other parameter; return the trainable count."""
    frozen = set(stage.frozen)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    return trainable_parameters(model)


# ----- EWC ----------------------------------------------------------------------------------


def estimate_fisher(
    model: nn.Module, data, *, n_batches: int, batch_size: int, seed: int
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of ``model``'s training loss on ``data``'s training batches.

    F_i = mean over the first ``n_batches`` batches (epoch 0 order) of the squared gradient
    of the batch's mean loss. This is the batch-level estimate: cheaper than per-example
    gradients by a factor of the batch size, and smaller by about that factor, which
    ``ewc_lambda`` absorbs. Dropout is off (``eval()``) so the estimate is deterministic.

    Returns:
        parameter name -> float32 tensor of the parameter's shape.

    Raises:
        FineTuneError: ``n_batches`` below 1.
    """
    if n_batches < 1:
        raise FineTuneError(f"ewc_samples must be at least 1 batch, got {n_batches}")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed + _FISHER_SEED)
    params = {n: p for n, p in model.named_parameters()}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    used = 0
    for raw in data.train_loader(batch_size, 0):
        if used >= n_batches:
            break
        batch = {k: torch.as_tensor(v).to(device) for k, v in raw.items()}
        model.zero_grad(set_to_none=True)
        model.training_loss(batch, gen).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float() ** 2
        used += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {n: f / max(used, 1) for n, f in fisher.items()}


class EWCPenalty:
    """``lam / 2 * sum_i F_i (theta_i - theta*_i)^2`` over the anchored parameters.

    Args:
        fisher: name -> diagonal Fisher (parameter's shape).
        anchor: name -> pre-trained values theta*.
        lam: ``ewc_lambda``.
    """

    def __init__(
        self, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], lam: float
    ) -> None:
        self.fisher = fisher
        self.anchor = anchor
        self.lam = float(lam)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The penalty (a scalar tensor with gradients) for ``model``'s current weights."""
        params = dict(model.named_parameters())
        total = torch.zeros((), device=next(model.parameters()).device)
        for name, f in self.fisher.items():
            total = total + (f * (params[name].float() - self.anchor[name]) ** 2).sum()
        return 0.5 * self.lam * total


def build_ewc(
    config: ForkConfig,
    ckpt: dict[str, Any],
    pretrain_dataset: str,
    model: nn.Module,
    loaded: Iterable[str],
    where: str,
) -> EWCPenalty:
    """EWC anchored at ``model``'s current (freshly loaded) weights, Fisher from pre-training data.

    The pre-training dataset is read under the fine-tuning config's ``data_path``, with the
    same architecture and the checkpoint's weights; only parameters loaded from the
    checkpoint into both models (``loaded``: those of ``model``) with equal shapes are
    anchored.

    Raises:
        FineTuneError: ``ewc_samples`` below 1.
        ValueError: the pre-training dataset cannot be loaded (named in the message).
    """
    from recbole.utils import init_seed

    from recbole_fork.data import build_seq_data
    from recbole_fork.models import get_model_class
    from recbole_fork.transfer import transfer_weights

    pre_config = build_config(dict(config.external_config_dict), dataset=pretrain_dataset)
    init_seed(config["seed"], config["reproducibility"])
    pre_data = build_seq_data(pre_config)
    pre_model = get_model_class(config["model"])(
        pre_config, pre_data.dataset, item_counts=pre_data.item_counts
    ).to(next(model.parameters()).device)
    pre_report = transfer_weights(pre_model, ckpt, dataset=pretrain_dataset, where=where)
    fisher = estimate_fisher(
        pre_model,
        pre_data,
        n_batches=int(config["ewc_samples"]),
        batch_size=int(config["train_batch_size"]),
        seed=int(config["seed"]),
    )
    own = dict(model.named_parameters())
    anchored = set(loaded) & set(pre_report.loaded)
    keep = {n for n in anchored if n in own and own[n].shape == fisher[n].shape}
    logger.info(
        "EWC: Fisher of %d tensors from %d batches of %s, lambda %g",
        len(keep),
        int(config["ewc_samples"]),
        pretrain_dataset,
        float(config["ewc_lambda"]),
    )
    return EWCPenalty(
        {n: fisher[n] for n in sorted(keep)},
        {n: own[n].detach().float().clone() for n in sorted(keep)},
        float(config["ewc_lambda"]),
    )


# ----- trainer ------------------------------------------------------------------------------


class FineTuneTrainer(SeqTrainer):
    """``SeqTrainer`` that freezes parameters stage by stage and may add an EWC penalty.

    Frozen parameters get no gradient (``requires_grad=False``), so Adam and AdamW leave them
    exactly unchanged (they skip parameters whose gradient is None). Each stage is logged:
    a log line, a run tag and a JSON artifact ``stages/stage_<k>_<name>.json`` listing the
    frozen parameters; every epoch logs ``trainable_params`` (and ``ewc_penalty``).

    Args:
        config, model, data, checkpoint_path, tracker, show_progress: as ``SeqTrainer``.
        stages: from ``plan_stages``; they must cover ``[0, epochs)`` in order.
        ewc: the penalty, or None.
        stage_hook: called ``hook("start" | "end", stage, model)`` around each stage (tests
            snapshot the weights there); "end" of the last stage runs before the best
            weights are restored.
        info: plain data stored in the checkpoint under ``fine_tune``.
    """

    def __init__(
        self,
        config,
        model: nn.Module,
        data,
        checkpoint_path: str | Path,
        tracker=None,
        show_progress: bool = True,
        *,
        stages: list[Stage],
        ewc: EWCPenalty | None = None,
        stage_hook: StageHook | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(config, model, data, checkpoint_path, tracker, show_progress)
        self.stages = stages
        self.ewc = ewc
        self.stage_hook = stage_hook
        self.info = dict(info or {})
        self.current_stage: Stage | None = None

    def _stage_for(self, epoch: int) -> Stage:
        for stage in self.stages:
            if stage.start_epoch <= epoch < stage.end_epoch:
                return stage
        return self.stages[-1]

    def _enter_stage(self, stage: Stage) -> None:
        if self.current_stage is not None and self.stage_hook is not None:
            self.stage_hook("end", self.current_stage, self.model)
        self.current_stage = stage
        n = apply_stage(self.model, stage)
        logger.info(
            "stage %d (%s), epochs %d-%d: %d parameter tensors frozen, %d trainable parameters",
            stage.index,
            stage.name,
            stage.start_epoch,
            stage.end_epoch - 1,
            len(stage.frozen),
            n,
        )
        if self.tracker is not None:
            record = {**stage.as_dict(), "trainable_params": n}
            self.tracker.log_dict(record, f"stages/stage_{stage.index}_{stage.name}.json")
            self.tracker.set_tags(
                {f"stage_{stage.index}": f"{stage.name}: {len(stage.frozen)} tensors frozen"}
            )
        if self.stage_hook is not None:
            self.stage_hook("start", stage, self.model)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        stage = self._stage_for(epoch)
        if stage is not self.current_stage:
            self._enter_stage(stage)
        if self.ewc is None:
            metrics = super()._train_epoch(epoch)
        else:
            metrics = self._train_epoch_with_penalty(epoch)
        metrics["trainable_params"] = float(trainable_parameters(self.model))
        return metrics

    def _train_epoch_with_penalty(self, epoch: int) -> dict[str, float]:
        # SeqTrainer computes the batch loss inline as model.training_loss(...): shadow that
        # method on the instance for this epoch so the penalty is part of every backward.
        # (A SeqTrainer hook for the batch loss would make this unnecessary.)
        model, penalty = self.model, self.ewc
        original = model.training_loss
        values: list[float] = []

        def loss_with_penalty(batch, generator=None):
            term = penalty(model)
            values.append(float(term.detach()))
            return original(batch, generator) + term

        model.training_loss = loss_with_penalty
        try:
            metrics = super()._train_epoch(epoch)
        finally:
            del model.training_loss
        metrics["ewc_penalty"] = sum(values) / max(len(values), 1)
        return metrics

    def _finish(self) -> dict[str, float]:
        if self.current_stage is not None and self.stage_hook is not None:
            self.stage_hook("end", self.current_stage, self.model)
        return super()._finish()

    def _state(self, epoch: int) -> dict[str, Any]:
        state = super()._state(epoch)
        state["fine_tune"] = {**self.info, "stages": [s.as_dict() for s in self.stages]}
        return state


# ----- entry point --------------------------------------------------------------------------


def fine_tune(
    config: ForkConfig,
    checkpoint_path: str | Path,
    *,
    pretrained: str | Path | None = None,
    strategy: str | None = None,
    pretrain_dataset: str | None = None,
    tracking_uri: str | None = None,
    config_file: str | Path | None = None,
    stage_hook: StageHook | None = None,
) -> dict[str, Any]:
    """Fine-tune on ``config['dataset']`` from ``pretrained``, tracked in MLflow.

    The MLflow experiment is ``fine_tune-<dataset>``; the run name adds the strategy to the
    hyperparameters (``fine_tune_run_name``). Every check (checkpoint, datasets, model,
    sizes, strategy) runs before the run is opened and before any training.

    Args:
        config: from ``fine_tune_config`` (architecture keys equal to the checkpoint's).
        checkpoint_path: the fine-tuned checkpoint to write.
        pretrained: the pre-trained checkpoint; needed by every strategy but ``from_scratch``
            (which ignores its weights).
        strategy: one of ``STRATEGIES``; None = ``config['fine_tune_strategy']``.
        pretrain_dataset: the pre-training dataset (EWC's Fisher; logged); None = the
            checkpoint's own ``dataset``.
        tracking_uri: MLflow tracking URI (see ``recbole_fork.tracking``).
        config_file: stored as an artifact of the run.
        stage_hook: see ``FineTuneTrainer``.

    Returns:
        The final metrics (best valid epoch's valid and test metrics), plus ``transfer_*``.

    Raises:
        FineTuneError: unknown strategy, missing checkpoint argument, missing dataset
            (the datasets found are listed), a stock RecBole model, too few epochs.
        CheckpointError: missing or foreign checkpoint.
        ConfigError: the checkpoint holds another model than the config.
        transfer.TransferError: a checkpoint whose sizes do not fit the config.
    """
    from recbole.utils import init_seed

    from recbole_fork.data import build_seq_data
    from recbole_fork.models import get_model_class, is_fork_model
    from recbole_fork.run import experiment_name, setup_logging
    from recbole_fork.tracking import Tracker
    from recbole_fork.trainer import check_settings
    from recbole_fork.transfer import transfer_weights

    setup_logging()
    strategy = str(strategy or config["fine_tune_strategy"])
    if strategy not in STRATEGIES:
        raise FineTuneError(f"unknown fine_tune_strategy {strategy!r}; valid: {list(STRATEGIES)}")
    if not is_fork_model(config["model"]):
        raise FineTuneError(
            f"fine-tuning supports the fork's models, not RecBole's {config['model']!r}"
        )
    ckpt = None
    if strategy != "from_scratch":
        if pretrained is None:
            raise FineTuneError(
                f"strategy {strategy!r} starts from a pre-trained checkpoint: pass -i CHECKPOINT"
            )
        ckpt = read_pretrained(pretrained)
        if ckpt.get("model") != str(config["model"]):
            raise ConfigError(
                f"checkpoint {pretrained} holds a {ckpt.get('model')} "
                f"({ckpt.get('model_description')}), but the config builds "
                f"{config['model']}; fine-tune with the checkpoint's model"
            )
    check_dataset(config)
    pre_name = pretrain_dataset or (str(ckpt["config"].get("dataset")) if ckpt else None)
    if strategy == "ewc":
        check_dataset(config, pre_name)
    check_settings(config)

    init_seed(config["seed"], config["reproducibility"])
    data = build_seq_data(config)
    init_seed(config["seed"], config["reproducibility"])
    device = torch.device(config["device"]) if config["device"] else torch.device("cpu")
    model = get_model_class(config["model"])(config, data.dataset, item_counts=data.item_counts)
    model = model.to(device)
    report = None
    if ckpt is not None:
        report = transfer_weights(model, ckpt, dataset=str(config["dataset"]), where=pretrained)
    stages = plan_stages(
        model,
        strategy,
        epochs=int(config["epochs"]),
        epochs_per_stage=int(config["progressive_epochs_per_stage"] or 1),
        loaded=report.loaded if report else (),
    )
    ewc = None
    if strategy == "ewc":
        ewc = build_ewc(config, ckpt, pre_name, model, report.loaded, str(pretrained))

    info = {
        "strategy": strategy,
        "pretrained_checkpoint": str(pretrained) if ckpt is not None else None,
        "pretrain_dataset": pre_name,
    }
    tracker = Tracker(
        experiment_name(config, "fine_tune"),
        fine_tune_run_name(config, strategy),
        tracking_uri=tracking_uri,
        tags={
            "script": "fine_tune",
            "model": str(config["model"]),
            "dataset": str(config["dataset"]),
            "strategy": strategy,
            "pretrain_dataset": str(pre_name),
        },
    )
    with tracker:
        if config_file is not None:
            tracker.log_artifact(resolve_config_path(config_file))
        tracker.log_dict(config.to_dict(), "resolved_config.json")
        params = run_params(config, model, data, tracker.run_name)
        params.update({f"fine_tune.{k}": v for k, v in info.items()})
        transfer_metrics: dict[str, float] = {}
        if report is not None:
            transfer_metrics = report.metrics()
            params.update({k: v for k, v in transfer_metrics.items()})
            params["transfer_id_rows"] = report.id_rows
            params["transfer_id_init_std"] = report.id_init_std
            tracker.log_dict(report.as_dict(), "transfer.json")
            tracker.log_metrics(transfer_metrics)
        tracker.log_params(params)
        trainer = FineTuneTrainer(
            config,
            model,
            data,
            checkpoint_path,
            tracker,
            show_progress=bool(config["show_progress"]),
            stages=stages,
            ewc=ewc,
            stage_hook=stage_hook,
            info=info,
        )
        result: dict[str, Any] = dict(trainer.fit())
        result.update(transfer_metrics)
        tracker.log_dict(result, "final_metrics.json")
    logger.info(f"MLflow run {tracker.run_id} ({tracker.run_name}) at {tracker.uri}")
    return result


__all__ = [
    "STRATEGIES",
    "EWCPenalty",
    "FineTuneError",
    "FineTuneTrainer",
    "Stage",
    "apply_stage",
    "architecture_keys",
    "backbone_layers",
    "build_ewc",
    "check_dataset",
    "estimate_fisher",
    "fine_tune",
    "fine_tune_config",
    "fine_tune_run_name",
    "plan_stages",
    "read_pretrained",
    "trainable_parameters",
]
