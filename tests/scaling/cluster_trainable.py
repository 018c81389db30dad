"""The trainable of the sweep in ``test_ray_cluster.py``: ``recbole_fork.run.pre_train``, plus a note.

A module of the project, not of an installed package, named in the sweep file as
``trainable: tests.scaling.cluster_trainable.pre_train``: a cluster's workers import it only
through the PYTHONPATH the sweep gives them (``recbole_fork.scaling.sweep.worker_runtime_env``).
Before training it writes the id of the Ray node it runs on to ``node_id`` beside the
checkpoint, so the test can see that the trials ran on both nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pre_train(
    config: Any, checkpoint_path: Path, *, resume: bool = False, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Note the node, then train as ``recbole_fork.run.pre_train`` does."""
    import ray

    from recbole_fork.run import pre_train as train

    node_id = ray.get_runtime_context().get_node_id()
    Path(checkpoint_path).with_name("node_id").write_text(node_id)
    return train(config, checkpoint_path, resume=resume, tracking_uri=tracking_uri)
