"""Fine-tuning a pre-trained model on a target catalog, with one of five strategies.

A recipe on the pre-training run assembly (``recbole_fork.session``), in the spirit of
torchtune's: ``FineTuneRecipe.setup`` / ``train`` / ``cleanup`` (``recipe.py``). The parts:

* ``settings.py``: the fine-tuning slice (``fine_tune_strategy``, ...) and ``STRATEGIES``.
* ``config.py``: the run's config, its architecture taken from the checkpoint.
* ``transfer.py``: moving a checkpoint to a new catalog (text re-encoded by string,
  fresh item-ID rows).
* ``stages.py``: which parameters are frozen in which epochs, and ``StagedTrainer``.
* ``ewc.py``: elastic weight consolidation as a trainer subclass overriding the batch loss.

The strategies:

* ``from_scratch``: the same architecture trained on the target only (no weights loaded).
* ``full``: every weight loaded from the checkpoint and trainable.
* ``frozen_embeddings``: the item encoder's tables (text token tables, item-ID table) frozen;
  adapter, backbone and position embeddings trainable.
* ``progressive``: embeddings frozen; stage i = 1..n trains only the top i backbone layers for
  ``progressive_epochs_per_stage`` epochs each; the last stage trains everything.
* ``ewc``: everything trainable, plus ``ewc_lambda / 2 * sum_i F_i (theta_i - theta*_i)^2``
  with theta* the pre-trained weights and F the diagonal Fisher estimated on ``ewc_samples``
  batches of the pre-training dataset.
"""

from recbole_fork.finetune.config import (
    architecture_keys,
    check_dataset,
    fine_tune_config,
    read_pretrained,
)
from recbole_fork.finetune.ewc import EWCPenalty, EWCTrainer, build_ewc, estimate_fisher
from recbole_fork.finetune.recipe import FineTuneRecipe, fine_tune
from recbole_fork.finetune.settings import STRATEGIES, FineTuneError, FineTuneSettings
from recbole_fork.finetune.stages import (
    Stage,
    StagedTrainer,
    apply_stage,
    backbone_layers,
    plan_stages,
    trainable_parameters,
)

__all__ = [
    "STRATEGIES",
    "EWCPenalty",
    "EWCTrainer",
    "FineTuneError",
    "FineTuneRecipe",
    "FineTuneSettings",
    "Stage",
    "StagedTrainer",
    "apply_stage",
    "architecture_keys",
    "backbone_layers",
    "build_ewc",
    "check_dataset",
    "estimate_fisher",
    "fine_tune",
    "fine_tune_config",
    "plan_stages",
    "read_pretrained",
    "trainable_parameters",
]
