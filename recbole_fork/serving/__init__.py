"""Serving a trained model's top-k recommendations over HTTP (FastAPI + uvicorn).

* ``loading.py``: a checkpoint (or an MLflow run's) and its dataset, loaded and checked.
* ``recommender.py``: the item matrix on the device, requests resolved to item ids, batches
  ranked through the evaluator's engine (``evaluation.topk_items``), new items by text.
* ``batching.py``: micro-batching of concurrent requests on one model thread.
* ``app.py``: the HTTP API and its error answers.
* ``server.py``: uvicorn on a socket bound first; a background server for tests.
* ``cli.py``: ``scripts/serve.py``.
"""

from recbole_fork.serving.app import ServerOptions, create_app
from recbole_fork.serving.loading import Servable, ServingError, load_servable
from recbole_fork.serving.recommender import Limits, Query, Ranking, Recommender, RequestError
from recbole_fork.serving.server import BackgroundServer, bind_socket, run_server

__all__ = [
    "BackgroundServer",
    "Limits",
    "Query",
    "Ranking",
    "Recommender",
    "RequestError",
    "Servable",
    "ServerOptions",
    "ServingError",
    "bind_socket",
    "create_app",
    "load_servable",
    "run_server",
]
