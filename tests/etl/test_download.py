"""`download_raw_files` against a local HTTP server on 127.0.0.1 that supports Range."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from etl.download import DownloadError, _is_offline, download_raw_files, file_url
from etl.raw_files import RAW_FILES, RawFile, download_selection

BODY = bytes(range(256)) * 40  # 10,240 bytes
SHA = hashlib.sha256(BODY).hexdigest()
NAME = "reviews_Beauty_5.json.gz"


@dataclass
class Behaviour:
    """What the test server does; `ranges` records each request's Range header (or None)."""

    files: dict[str, bytes]
    cut_first_after: int | None = None  # first response: send this many bytes, then close
    ignore_range: bool = False
    ranges: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        b = self.server.behaviour  # type: ignore[attr-defined]
        b.ranges.append(self.headers.get("Range"))
        b.paths.append(self.path)
        body = b.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and not b.ignore_range:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        payload = body[start:]
        if b.cut_first_after is not None and len(b.ranges) == 1:
            self.wfile.write(payload[: b.cut_first_after])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # cut the connection mid-file
            return
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    """A Range-capable HTTP server on a free 127.0.0.1 port, serving under /2018 and /2014."""
    behaviour = Behaviour(files={})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.behaviour = behaviour  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _table(sha: str | None = SHA, size: int | None = None) -> dict[str, RawFile]:
    entry = RawFile(
        NAME, "amazon-2014", "reviews_json", "finetune_reviews", "files/" + NAME, "amazon-beauty"
    )
    return {NAME: replace(entry, size=size, sha256=sha)}


def _get(tmp_path: Path, url: str, **kwargs: object) -> list[Path]:
    defaults: dict[str, object] = {
        "base_urls": {"amazon-2018": url + "/2018", "amazon-2014": url + "/2014"},
        "table": _table(),
        "progress": False,
        "backoff": 0.01,
        "timeout": 5,
    }
    defaults.update(kwargs)
    return download_raw_files(tmp_path / "raw", **defaults)  # type: ignore[arg-type]


def test_full_download_with_checksum(tmp_path, server):
    url, b = server
    b.files["/2014/files/" + NAME] = BODY
    paths = _get(tmp_path, url)
    assert paths == [tmp_path / "raw" / NAME]
    assert paths[0].read_bytes() == BODY
    assert b.ranges == [None]  # one plain request
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [NAME]  # no .part left


def test_cut_connection_resumes_with_range(tmp_path, server):
    url, b = server
    b.files["/2014/files/" + NAME] = BODY
    b.cut_first_after = 3_000
    paths = _get(tmp_path, url)
    assert paths[0].read_bytes() == BODY
    assert b.ranges == [None, "bytes=3000-"]  # the second request resumed at the cut


def test_server_ignoring_range_restarts_from_zero(tmp_path, server):
    url, b = server
    b.files["/2014/files/" + NAME] = BODY
    b.ignore_range = True
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / (NAME + ".part")).write_bytes(b"garbage!" * 10)  # a stale partial download
    paths = _get(tmp_path, url)
    assert paths[0].read_bytes() == BODY
    assert b.ranges == ["bytes=80-"]  # asked to resume, got 200 with the whole file


def test_complete_part_answered_416_is_finalised(tmp_path, server):
    url, b = server
    b.files["/2014/files/" + NAME] = BODY
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / (NAME + ".part")).write_bytes(BODY)
    assert _get(tmp_path, url)[0].read_bytes() == BODY
    assert b.ranges == [f"bytes={len(BODY)}-"]


def test_checksum_mismatch_is_clear_and_leaves_nothing(tmp_path, server):
    url, b = server
    b.files["/2014/files/" + NAME] = BODY
    with pytest.raises(DownloadError, match=rf"{NAME}: sha256 {SHA} does not match") as exc:
        _get(tmp_path, url, table=_table(sha="0" * 64))
    assert "\n" not in str(exc.value)
    assert list((tmp_path / "raw").iterdir()) == []  # neither final file nor .part


def test_size_mismatch_with_the_table_is_an_error(tmp_path, server):
    url, b = server
    b.files["/2014/files/" + NAME] = BODY
    with pytest.raises(DownloadError, match=f"server reports {len(BODY)} bytes, expected 99"):
        _get(tmp_path, url, table=_table(size=99))
    assert not (tmp_path / "raw" / NAME).exists()


def test_complete_file_is_skipped(tmp_path, server):
    url, b = server
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / NAME).write_bytes(BODY)
    assert _get(tmp_path, url) == [raw / NAME]
    assert b.ranges == []  # no request at all


def test_http_404_fails_without_retrying(tmp_path, server):
    url, b = server
    with pytest.raises(DownloadError, match=r"HTTP 404 .* for http://127\.0\.0\.1:\d+/2014/files/"):
        _get(tmp_path, url)
    assert len(b.ranges) == 1


def test_dead_port_fails_fast_listing_files_to_place_by_hand(tmp_path):
    with socket.socket() as s:  # a free port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    bases = {"amazon-2018": url + "/2018", "amazon-2014": url + "/2014"}
    start = time.monotonic()
    with pytest.raises(DownloadError) as exc:
        download_raw_files(
            tmp_path / "raw",
            base_urls={release: base + "/" for release, base in bases.items()},
            progress=False,
            backoff=5.0,  # a retry would take 5 s: the test shows there is none
        )
    assert time.monotonic() - start < 2.0
    message = str(exc.value)
    assert message.startswith("no network") and "\n" not in message
    assert str(tmp_path / "raw") in message
    for name in download_selection("amazon", "2018"):  # the default selection
        entry = RAW_FILES[name]
        assert f"{name} <- {bases[entry.release]}/{entry.source}" in message


def test_unknown_file_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown raw file\(s\) \['x.csv'\]; valid names"):
        download_raw_files(tmp_path, files=["x.csv"], progress=False)


def test_default_table_and_urls():
    assert set(download_selection("amazon", "2018")) == {
        "all_csv_files.csv",
        "All_Amazon_Meta.json.gz",
        "reviews_Beauty_5.json.gz",
        "reviews_Sports_and_Outdoors_5.json.gz",
        "meta_Beauty.json.gz",
        "meta_Sports_and_Outdoors.json.gz",
    }
    assert file_url(RAW_FILES["all_csv_files.csv"]) == (
        "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/categoryFilesSmall/"
        "all_csv_files.csv"
    )
    assert RAW_FILES["meta_Beauty.json.gz"].url == (
        "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Beauty.json.gz"
    )
    for entry in RAW_FILES.values():
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)


class _Unavailable(_Handler):
    def do_GET(self) -> None:
        self.server.behaviour.ranges.append(self.headers.get("Range"))  # type: ignore[attr-defined]
        self.send_error(503)


def test_server_errors_are_retried_then_reported(tmp_path):
    behaviour = Behaviour(files={})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    httpd.behaviour = behaviour  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(DownloadError, match=f"{NAME}: giving up after 2 retries"):
            _get(tmp_path, url, retries=2)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert len(behaviour.ranges) == 3  # the first try and 2 retries


def test_dns_failure_counts_as_offline_but_a_timeout_does_not():
    dns = urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))
    assert _is_offline(dns)
    assert _is_offline(urllib.error.URLError(ConnectionRefusedError(111, "refused")))
    assert not _is_offline(urllib.error.URLError(TimeoutError("timed out")))


def test_amazon_2023_files_keep_their_folders_and_resume(tmp_path, server):
    """The table's 2023 entries: reviews, metadata and an official split, from a mirror."""
    url, b = server
    names = download_selection("amazon", "2023", ["All_Beauty"], ["5core/last_out_w_his"])
    assert names == [
        "All_Beauty.jsonl.gz",
        "meta_All_Beauty.jsonl.gz",
        "benchmark/5core/last_out_w_his/All_Beauty.train.csv.gz",
        "benchmark/5core/last_out_w_his/All_Beauty.valid.csv.gz",
        "benchmark/5core/last_out_w_his/All_Beauty.test.csv.gz",
    ]
    bodies = {name: BODY[i:] for i, name in enumerate(names)}
    for name, body in bodies.items():
        b.files["/a23/" + RAW_FILES[name].source] = body  # type: ignore[operator]
    assert b.files.keys() >= {"/a23/raw/review_categories/All_Beauty.jsonl.gz",
                              "/a23/raw/meta_categories/meta_All_Beauty.jsonl.gz"}  # fmt: skip
    b.cut_first_after = 1_000
    paths = download_raw_files(
        tmp_path / "raw", files=names, base_urls={"amazon-2023": url + "/a23"},
        progress=False, backoff=0.01, timeout=5,
    )  # fmt: skip
    assert paths == [tmp_path / "raw" / n for n in names]
    assert all(p.read_bytes() == bodies[n] for p, n in zip(paths, names))
    assert b.ranges[:2] == [None, "bytes=1000-"]  # the cut first file resumed
    # a second run finds every file complete and asks for nothing
    asked = len(b.ranges)
    download_raw_files(tmp_path / "raw", files=names, base_urls={"amazon-2023": url + "/a23"},
                       progress=False)  # fmt: skip
    assert len(b.ranges) == asked


def test_movielens_zip_with_checksum(tmp_path, server):
    url, b = server
    assert download_selection("movielens", "ml-20m") == ["ml-20m.zip"]
    assert (
        RAW_FILES["ml-20m.zip"].url == "https://files.grouplens.org/datasets/movielens/ml-20m.zip"
    )
    b.files["/ml/ml-20m.zip"] = BODY
    table = {"ml-20m.zip": replace(RAW_FILES["ml-20m.zip"], sha256=SHA)}
    paths = download_raw_files(
        tmp_path / "raw", base_urls={"movielens": url + "/ml"}, table=table, progress=False
    )
    assert paths[0].read_bytes() == BODY
    table = {"ml-20m.zip": replace(RAW_FILES["ml-20m.zip"], sha256="0" * 64)}
    (tmp_path / "raw" / "ml-20m.zip").unlink()
    with pytest.raises(DownloadError, match="ml-20m.zip: sha256"):
        download_raw_files(
            tmp_path / "raw", base_urls={"movielens": url + "/ml"}, table=table, progress=False
        )


def test_selection_errors_are_clear():
    with pytest.raises(ValueError, match="pass --categories"):
        download_selection("amazon", "2023")
    with pytest.raises(ValueError, match=r"unknown Amazon 2023 category or split \['Beauty'\]"):
        download_selection("amazon", "2023", ["Beauty"])
    with pytest.raises(ValueError, match="unknown MovieLens release 'ml-2m'"):
        download_selection("movielens", "ml-2m")
    assert len(download_selection("amazon", "2023", ["all"])) == 2 * 34
