"""Fine-tuning stages: which parameters are frozen during which epochs, and the trainer
that enters them.

* ``from_scratch``, ``full``, ``ewc``: one stage, nothing frozen.
* ``frozen_embeddings``: one stage, the item encoder's tables frozen.
* ``progressive``: embeddings frozen; stage i = 1..n trains only the top i backbone layers
  for ``progressive_epochs_per_stage`` epochs each; the last stage trains everything.

Only weights that came from the checkpoint are ever frozen: item-ID rows drawn fresh for a
new catalog stay trainable, since frozen random vectors would carry no information.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from recbole_fork.finetune.settings import STRATEGIES, FineTuneError
from recbole_fork.trainer import SeqTrainer

logger = logging.getLogger(__name__)

StageHook = Callable[[str, "Stage", nn.Module], None]


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


class StagedTrainer(SeqTrainer):
    """``SeqTrainer`` that freezes parameters stage by stage (its ``on_epoch_start`` hook).

    Frozen parameters get no gradient (``requires_grad=False``), so Adam and AdamW leave them
    exactly unchanged (they skip parameters whose gradient is None). Each stage is logged:
    a log line, a run tag and a JSON artifact ``stages/stage_<k>_<name>.json`` listing the
    frozen parameters; every epoch logs ``trainable_params``.

    Args:
        model, data, and the keyword arguments of ``SeqTrainer``, plus:
        stages: from ``plan_stages``; they must cover ``[0, epochs)`` in order.
        stage_hook: called ``hook("start" | "end", stage, model)`` around each stage (tests
            snapshot the weights there); "end" of the last stage runs before the best
            weights are restored.
        info: plain data stored in the checkpoint under ``fine_tune``.
    """

    # Fine-tuning has no --resume: its checkpoint is the fine-tuned model, not a restart point.
    resume_hint = "fine-tuning starts over: rerun the command with --overwrite"

    def __init__(
        self,
        model: nn.Module,
        data,
        *,
        stages: list[Stage],
        stage_hook: StageHook | None = None,
        info: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, data, **kwargs)
        self.stages = stages
        self.stage_hook = stage_hook
        self.info = dict(info or {})
        self.current_stage: Stage | None = None

    def _stage_for(self, epoch: int) -> Stage:
        for stage in self.stages:
            if stage.start_epoch <= epoch < stage.end_epoch:
                return stage
        return self.stages[-1]

    def on_epoch_start(self, epoch: int) -> None:
        stage = self._stage_for(epoch)
        if stage is self.current_stage:
            return
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

    def epoch_extras(self, epoch: int) -> dict[str, float]:
        return {"trainable_params": float(trainable_parameters(self.model))}

    def on_finish(self) -> None:
        if self.current_stage is not None and self.stage_hook is not None:
            self.stage_hook("end", self.current_stage, self.model)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"fine_tune": {**self.info, "stages": [s.as_dict() for s in self.stages]}}


__all__ = [
    "Stage",
    "StageHook",
    "StagedTrainer",
    "apply_stage",
    "backbone_layers",
    "plan_stages",
    "trainable_parameters",
]
