"""A real server on 127.0.0.1 (a free port), a real HTTP client (requests): served lists
equal the offline evaluator's, new items by text, every bad request's 4xx, 200 concurrent
requests, a clean stop."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from recbole_fork.data import SeqData
from recbole_fork.evaluation import topk_items
from recbole_fork.serving import (
    BackgroundServer,
    Limits,
    Recommender,
    Servable,
    ServerOptions,
    create_app,
    load_servable,
)
from tests.serving.conftest import MODELS, write_shop_dataset

TIMEOUT = 60  # seconds per HTTP call: generous, the test machine is shared


def start_server(
    checkpoint: Path | Servable, options: ServerOptions | None = None, **kwargs
) -> BackgroundServer:
    """A started background server of ``checkpoint`` on a free loopback port."""
    sv = checkpoint if isinstance(checkpoint, Servable) else load_servable(checkpoint)
    return BackgroundServer(create_app(Recommender(sv, **kwargs), options)).start()


def offline_test_topk(sv: Servable, k: int = 10) -> dict[str, tuple[list[str], np.ndarray]]:
    """The offline evaluator's top-k of every test user: the trainer's own path
    (``SeqData.eval_loader('test')`` batches, ``model.eval_step``'s user vectors,
    ``topk_items`` over ``model.item_embeddings`` with the history excluded). Keyed by raw
    user id; (raw item ids, scores)."""
    model, ds, ev = sv.model, sv.dataset, sv.settings.evaluation
    data = SeqData(ds, sv.settings.data)
    items = ds.field2id_token[ds.iid_field]
    users = ds.field2id_token[ds.uid_field]
    out = {}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in data.eval_loader("test", 16):
            user, _ = model.eval_step(batch, gen)
            scores, ids = topk_items(
                user.float(),
                lambda i: model.item_embeddings(i).float(),
                model.n_items,
                k,
                hist_indptr=batch["hist_indptr"],
                hist_items=batch["hist_items"],
                item_chunk=ev.eval_item_chunk,
                user_chunk=ev.eval_user_chunk,
            )
            for u, row_ids, row_scores in zip(batch["user"].tolist(), ids, scores):
                out[str(users[u])] = ([str(items[i]) for i in row_ids.tolist()], row_scores.numpy())
    return out


def served(answer: dict) -> tuple[list[str], np.ndarray]:
    return [x["item_id"] for x in answer["items"]], np.array([x["score"] for x in answer["items"]])


def assert_same_list(got: tuple[list[str], np.ndarray], want: tuple[list[str], np.ndarray]):
    assert got[0] == want[0]
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)


def raw_history(sv, user: str, drop: int) -> tuple[list[str], list[int]]:
    """A user's raw item ids and timestamps from the dataset, without the last ``drop``."""
    ds = sv.dataset
    uid = list(ds.field2id_token[ds.uid_field]).index(user)
    a, b = ds.hist_offsets[uid], ds.hist_offsets[uid + 1] - drop
    items = ds.field2id_token[ds.iid_field]
    return [str(items[i]) for i in ds.hist_items[a:b]], ds.hist_times[a:b].tolist()


def held_out_time(sv, user: str) -> int:
    """Unix seconds of a user's last (test) item."""
    ds = sv.dataset
    uid = list(ds.field2id_token[ds.uid_field]).index(user)
    return int(ds.hist_times[ds.hist_offsets[uid + 1] - 1])


@pytest.mark.parametrize("name", list(MODELS))
def test_served_top10_equals_offline_topk_for_every_test_user(name, checkpoints):
    sv = load_servable(checkpoints[name])
    want = offline_test_topk(sv)  # before the server shares the model
    assert len(want) == 40  # every user but short1 has a test item
    # Requests come one at a time here: no point waiting for others to batch with.
    with start_server(sv, ServerOptions(max_wait_ms=0)) as srv:
        s = requests.Session()
        for user, ref in want.items():
            r = s.post(f"{srv.url}/recommend", json={"user_id": user, "cutoff": "test"})
            assert r.status_code == 200, r.text
            assert_same_list(served(r.json()), ref)
            # The same history sent as item ids (and timestamps) gives the same list.
            history, times = raw_history(sv, user, drop=1)
            body = {"history": history, "k": 10}
            if name.startswith("hstu"):
                # HSTU's `next` time bias reads the gap to the event the list is for: the
                # offline protocol's is the held-out test item's own time.
                body["timestamps"] = times
                body["query_time"] = held_out_time(sv, user)
            r = s.post(f"{srv.url}/recommend", json=body)
            assert r.status_code == 200, r.text
            assert_same_list(served(r.json()), ref)
        # All of them in one batch call: the same lists, in request order.
        r = s.post(
            f"{srv.url}/recommend/batch",
            json={"requests": [{"user_id": u, "cutoff": "test"} for u in want]},
        )
        assert r.status_code == 200, r.text
        for result, ref in zip(r.json()["results"], want.values(), strict=True):
            assert_same_list(served(result), ref)


def test_user_id_default_cutoff_is_the_whole_history(checkpoints):
    sv = load_servable(checkpoints["sasrec-id"])
    with start_server(sv) as srv:
        by_user = requests.post(f"{srv.url}/recommend", json={"user_id": "c3"}, timeout=TIMEOUT)
        history, _ = raw_history(sv, "c3", drop=0)
        assert len(history) == 8
        by_items = requests.post(f"{srv.url}/recommend", json={"history": history}, timeout=TIMEOUT)
        test = requests.post(
            f"{srv.url}/recommend", json={"user_id": "c3", "cutoff": "test"}, timeout=TIMEOUT
        )
        valid = requests.post(
            f"{srv.url}/recommend", json={"user_id": "c3", "cutoff": "valid"}, timeout=TIMEOUT
        )
    assert_same_list(served(by_user.json()), served(by_items.json()))
    items = served(by_user.json())[0]
    assert len(items) == 10 and not set(items) & set(history)  # the history is excluded
    # The test cutoff holds the last item out: it may be recommended there, never here.
    assert history[-1] not in items
    assert served(test.json())[0] != items
    assert served(valid.json())[0] != served(test.json())[0]


def test_exclude_and_exclude_history(checkpoints):
    with start_server(checkpoints["sasrec-id"]) as srv:
        url = f"{srv.url}/recommend"
        base = requests.post(url, json={"history": ["p1", "p4"], "k": 29}, timeout=TIMEOUT).json()
        kept = requests.post(
            url, json={"history": ["p1", "p4"], "k": 29, "exclude_history": False}, timeout=TIMEOUT
        ).json()
        extra = requests.post(
            url, json={"history": ["p1", "p4"], "k": 5, "exclude": ["p2", "p9"]}, timeout=TIMEOUT
        ).json()
    # 30 items, 2 in the history: only 28 can be recommended, so the list is shorter than k.
    assert len(base["items"]) == 28 and {"p1", "p4"}.isdisjoint(served(base)[0])
    assert len(kept["items"]) == 29 and {"p1", "p4"} <= set(served(kept)[0])
    assert {"p2", "p9"}.isdisjoint(served(extra)[0])
    without = [i for i in served(base)[0] if i not in ("p2", "p9")]
    assert served(extra)[0] == without[:5]
    assert base["model"] == "sasrec-d16-l1-h1-id-shop-s7" and len(base["version"]) == 12
    assert base["elapsed_ms"] > 0


def test_new_items_by_text_are_recommended_at_once(checkpoints, shop):
    _, items = shop
    raw = {it.item_id: it for it in items}
    with start_server(checkpoints["sasrec-text"]) as srv:
        url = f"{srv.url}/recommend"
        before = requests.post(url, json={"user_id": "c5", "k": 5}, timeout=TIMEOUT).json()
        best, best_score = served(before)[0][0], served(before)[1][0]
        twin = raw[best]
        r = requests.post(
            f"{srv.url}/items",
            json={
                "items": [
                    {
                        "item_id": "new-twin",
                        "title": twin.title,
                        "brand": twin.brand,
                        "category_l1": twin.category_l1,
                    },
                    # Pieces the model never saw are dropped ("ÿÿÿ"; "▁" is known).
                    {"item_id": "new-unknown", "title": "ÿÿÿ"},
                    {"item_id": "new-empty"},
                ]
            },
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text
        added = r.json()
        assert added["added"] == ["new-twin", "new-unknown", "new-empty"]
        assert added["catalog_size"] == 33
        assert added["items_without_known_pieces"] == ["new-empty"]
        assert added["unseen_pieces"] == {"title": 1, "brand": 0, "category_l1": 0}
        after = requests.post(url, json={"user_id": "c5", "k": 5}, timeout=TIMEOUT).json()
        ids, scores = served(after)
        # The same text gives the same embedding: the new item ties with the item it copies.
        assert set(ids[:2]) == {best, "new-twin"}
        np.testing.assert_allclose(scores[:2], [best_score, best_score], rtol=1e-5)
        # A new item is an item like any other: in a history, in exclude.
        r = requests.post(
            url, json={"history": ["p1", "new-twin"], "exclude": ["new-unknown"]}, timeout=TIMEOUT
        )
        assert r.status_code == 200 and "new-unknown" not in served(r.json())[0]
        meta = requests.get(f"{srv.url}/metadata", timeout=TIMEOUT).json()
        assert meta["catalog_size"] == 33 and meta["added_items"] == 3


def test_metadata_and_healthz(checkpoints):
    sv = load_servable(checkpoints["sasrec-text"])
    final = sv.ckpt["state"]["final_metrics"]
    with start_server(sv) as srv:
        health = requests.get(f"{srv.url}/healthz", timeout=TIMEOUT).json()
        meta = requests.get(f"{srv.url}/metadata", timeout=TIMEOUT).json()
    assert health == {
        "status": "ok",
        "model": "sasrec-d16-l1-h1-text-shop-s7",
        "version": sv.version,
        "catalog_size": 30,
    }
    assert meta["model"] == "SASRecX" and meta["description"] == "sasrec-d16-l1-h1-text"
    assert meta["dataset"] == "shop" and meta["catalog_size"] == 30 and meta["users"] == 41
    assert meta["params"]["total"] == sum(p.numel() for p in sv.model.parameters())
    assert meta["params"]["embedding"] > 0
    assert meta["test_metrics"]["test_ndcg_at_10"] == final["best_test_ndcg_at_10"]
    assert meta["test_metrics"]["test_hr_at_10"] == final["best_test_hr_at_10"]
    assert meta["text_fields"] == ["title", "brand", "category_l1"]
    assert meta["eval_protocol"] == "leave-one-out, full ranking, history excluded"
    assert meta["server"]["max_batch"] == 64


# ----- bad requests -------------------------------------------------------------------------

LIMITS = Limits(max_k=20, max_history=50, max_exclude=50, max_new_items=3)
OPTIONS = ServerOptions(max_body_bytes=4096, max_batch_requests=5)

BAD_REQUESTS = [
    # (path, raw body, status, words the one-line reason must hold)
    ("/recommend", '{"history": ["p1", ', 400, "malformed JSON"),
    ("/recommend", "", 400, "must be a JSON object"),
    ("/recommend", "[1, 2]", 422, "dictionary"),
    ("/recommend", '{"history": ["p1", "nope", "zzz"]}', 400, "'nope', 'zzz'"),
    ("/recommend", '{"history": ["p1"], "exclude": ["gone"]}', 400, "'gone'"),
    ("/recommend", '{"user_id": "ghost"}', 400, "unknown user_id 'ghost'"),
    ("/recommend", '{"user_id": "short1", "cutoff": "test"}', 400, "3 or more"),
    ("/recommend", '{"history": []}', 400, "'history' is empty"),
    ("/recommend", "{}", 400, "exactly one of"),
    ("/recommend", '{"history": ["p1"], "user_id": "c1"}', 400, "exactly one of"),
    ("/recommend", '{"history": ["p1"], "cutoff": "test"}', 400, "'user_id' requests only"),
    ("/recommend", '{"user_id": "c1", "cutoff": "last"}', 422, "cutoff"),
    ("/recommend", '{"history": ["p1"], "k": 0}', 400, "k=0 is out of range: 1 to 20"),
    ("/recommend", '{"history": ["p1"], "k": 21}', 400, "k=21 is out of range"),
    ("/recommend", '{"history": ["p1"], "k": "ten"}', 422, "k:"),
    ("/recommend", '{"histroy": ["p1"]}', 422, "unknown key 'histroy'"),
    ("/recommend", '{"history": ["p1"], "timestamps": [1, 2]}', 400, "2 values for 1"),
    ("/recommend", '{"history": ' + str(["p1"] * 51).replace("'", '"') + "}", 400, "at most 50"),
    ("/recommend", '{"history": ["' + "p1" * 2100 + '"]}', 413, "over the limit of 4096"),
    ("/recommend/batch", '{"requests": []}', 400, "'requests' is empty"),
    (
        "/recommend/batch",
        '{"requests": [' + ",".join(['{"user_id": "c1"}'] * 6) + "]}",
        400,
        "at most 5",
    ),  # fmt: skip
    (
        "/recommend/batch",
        '{"requests": [{"user_id": "c1"}, {"history": ["x9"]}]}',
        400,
        "requests[1]: unknown item id(s) in 'history': 'x9'",
    ),  # fmt: skip
    ("/items", '{"items": [{"item_id": "p3", "title": "a"}]}', 400, "already in the catalog"),
    ("/items", '{"items": [{"item_id": "n1", "colour": "red"}]}', 400, "['colour']"),
    ("/items", '{"items": []}', 400, "'items' is empty"),
    ("/items", '{"items": [' + ",".join(['{"item_id": "a"}'] * 4) + "]}", 400, "at most 3"),
    ("/nowhere", "{}", 404, "Not Found"),
]


@pytest.fixture(scope="module")
def text_server(checkpoints):
    with start_server(checkpoints["sasrec-text"], OPTIONS, limits=LIMITS) as srv:
        yield srv


@pytest.mark.parametrize(("path", "body", "status", "reason"), BAD_REQUESTS)
def test_every_bad_request_gets_its_4xx_with_a_one_line_reason(
    text_server, path, body, status, reason
):
    r = requests.post(
        text_server.url + path,
        data=body.encode(),
        headers={"content-type": "application/json"},
        timeout=TIMEOUT,
    )
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert reason in message and "\n" not in message
    # The server is still up and serving.
    ok = requests.post(f"{text_server.url}/recommend", json={"user_id": "c1"}, timeout=TIMEOUT)
    assert ok.status_code == 200


def test_wrong_method_and_model_specific_refusals(text_server, checkpoints):
    r = requests.get(f"{text_server.url}/recommend", timeout=TIMEOUT)
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}
    with start_server(checkpoints["sasrec-id"]) as srv:
        r = requests.post(
            f"{srv.url}/items", json={"items": [{"item_id": "n1", "title": "x"}]}, timeout=TIMEOUT
        )
        assert r.status_code == 400
        assert "encodes items by their ID only" in r.json()["error"]
    with start_server(checkpoints["hstu-id"]) as srv:
        r = requests.post(f"{srv.url}/recommend", json={"history": ["p1"]}, timeout=TIMEOUT)
        assert r.status_code == 400 and "send 'timestamps'" in r.json()["error"]
        r = requests.post(
            f"{srv.url}/recommend", json={"history": ["p1"], "timestamps": [5]}, timeout=TIMEOUT
        )
        assert r.status_code == 200 and len(r.json()["items"]) == 10


def test_items_without_a_sentencepiece_model_are_refused(checkpoints, tmp_path):
    with start_server(checkpoints["sasrec-text"], sentencepiece=tmp_path / "none.model") as srv:
        r = requests.post(
            f"{srv.url}/items", json={"items": [{"item_id": "n1", "title": "x"}]}, timeout=TIMEOUT
        )
    assert r.status_code == 400 and "--sentencepiece" in r.json()["error"]


# ----- load and lifecycle -------------------------------------------------------------------


def test_200_concurrent_requests_all_succeed_in_micro_batches(checkpoints):
    ckpt = checkpoints["sasrec-text"]
    users = [f"c{u}" for u in range(1, 41)]
    with start_server(ckpt, ServerOptions(max_batch=32, max_wait_ms=5)) as srv:
        sequential = {
            u: served(requests.post(f"{srv.url}/recommend", json={"user_id": u}).json())[0]
            for u in users
        }
        before = requests.get(f"{srv.url}/metadata", timeout=TIMEOUT).json()["server"]
        barrier = threading.Barrier(200)
        answers: list = [None] * 200

        def client(i: int) -> None:
            barrier.wait()
            r = requests.post(f"{srv.url}/recommend", json={"user_id": users[i % 40]}, timeout=120)
            answers[i] = (r.status_code, served(r.json())[0] if r.ok else r.text)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = requests.get(f"{srv.url}/metadata", timeout=TIMEOUT).json()["server"]
    assert [a[0] for a in answers] == [200] * 200
    assert all(a[1] == sequential[users[i % 40]] for i, a in enumerate(answers))
    assert after["queries"] - before["queries"] == 200
    # Grouped: far fewer model calls than requests.
    assert after["batches"] - before["batches"] < 200


def test_server_stops_cleanly_and_frees_its_port(checkpoints):
    srv = start_server(checkpoints["sasrec-id"])
    app_batcher = srv._server.config.app.state.batcher
    r = requests.post(f"{srv.url}/recommend", json={"user_id": "c2"}, timeout=TIMEOUT)
    assert r.status_code == 200
    srv.stop()
    assert not srv.running
    assert app_batcher._task is None and app_batcher._executor is None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{srv.url}/healthz", timeout=5)
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", srv.port))


@pytest.mark.slow
def test_new_items_are_recommended_to_users_whose_history_their_text_matches(tmp_path):
    """A text model trained on users who stay mostly (80%) within one of three clusters
    (each cluster: its own title word and category) gets three new items, one per cluster,
    with titles it never saw otherwise. For most users of a cluster, the new item of their
    cluster scores highest of the three (chance: 1 in 3)."""
    from tests.serving.conftest import CATEGORIES, CLUSTER_WORDS, train_checkpoint

    root = tmp_path / "data"
    write_shop_dataset(root, n_users=120)
    ckpt = train_checkpoint(root, tmp_path, "sasrec-text", epochs=30, learning_rate=0.01)
    sv = load_servable(ckpt)
    ds = sv.dataset
    users = [str(u) for u in ds.field2id_token[ds.uid_field][1:] if str(u).startswith("c")]
    item_tokens = ds.field2id_token[ds.iid_field]
    cluster_of = {}
    for u in users:
        history, _ = raw_history(sv, u, drop=0)
        cluster_of[u] = int(np.bincount([int(t[1:]) % 3 for t in history], minlength=3).argmax())
    new_items = [
        {
            "item_id": f"new-{c}",
            "title": f"Purple tonic &amp; {CLUSTER_WORDS[c]} no.99",
            "brand": "Lumi",
            "category_l1": CATEGORIES[c],
        }
        for c in range(3)
    ]
    with start_server(sv) as srv:
        r = requests.post(f"{srv.url}/items", json={"items": new_items}, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        r = requests.post(
            f"{srv.url}/recommend/batch",
            json={"requests": [{"user_id": u, "k": len(item_tokens) + 2} for u in users]},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text
    wins = np.zeros((3, 3))
    for u, result in zip(users, r.json()["results"], strict=True):
        scores = {x["item_id"]: x["score"] for x in result["items"]}
        wins[cluster_of[u], int(np.argmax([scores[f"new-{c}"] for c in range(3)]))] += 1
    share = wins / wins.sum(axis=1, keepdims=True)  # [user's cluster, preferred new item]
    assert (np.diag(share) >= 0.6).all(), share


def test_a_fine_tuned_text_model_serves_the_offline_lists(
    checkpoints, shop, tmp_path, fake_tracker
):
    """Fine-tuning re-encodes the new catalog's pieces into the pre-training vocabulary
    (``finetune.transfer``); the server keeps the model's own tables, checks them against the
    dataset re-encoded the same way, and ranks as the offline evaluator does."""
    import shutil

    from recbole_fork.finetune import fine_tune, fine_tune_config

    root = tmp_path / "data"
    shutil.copytree(shop[0] / "sentencepiece", root / "sentencepiece")
    write_shop_dataset(root, n_users=24, n_items=18, seed=3, name="shop2", prefix="q", extra=" zq")
    pretrained = checkpoints["sasrec-text"]
    settings = {
        "fine_tune_strategy": "full", "data_path": str(root), "use_gpu": False,
        "show_progress": False, "epochs": 1, "num_negatives": 5,
    }  # fmt: skip
    ft = tmp_path / "ft.pth"
    fine_tune(fine_tune_config(settings, "shop2", pretrained=pretrained), ft, pretrained=pretrained)
    sv = load_servable(ft)
    assert sv.run_name == "sasrec-d16-l1-h1-text-shop2-full-s2020"
    assert sv.dataset.item_num == 19
    pre_vocab = load_servable(pretrained).model.vocab()
    assert sv.model.vocab() == pre_vocab  # the pre-training's vocabulary, not shop2's
    assert list(sv.dataset.field2id_token["title"]) != pre_vocab["title"]
    want = offline_test_topk(sv)
    assert len(want) == 24
    with start_server(sv, ServerOptions(max_wait_ms=0)) as srv:
        s = requests.Session()
        for user, ref in want.items():
            r = s.post(f"{srv.url}/recommend", json={"user_id": user, "cutoff": "test"})
            assert r.status_code == 200, r.text
            assert_same_list(served(r.json()), ref)
