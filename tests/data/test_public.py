"""`bpo:NAME` inputs: download once from a pinned URL, check, cache; BPO_RAY_DATA_DIR wins.

A local HTTP server stands in for raw.githubusercontent.com, serving the project's own fixture
files with the pins patched to them: no test reaches the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bpo_ray.data import public
from bpo_ray.data.public import resolve_input, resolve_inputs
from bpo_ray.errors import InputError
from ports import free_port  # tests/ is on sys.path (conftest)

BPO_RAY = str(Path(sys.executable).with_name("bpo-ray"))


class Served:
    """Files under a local web root laid out like the raw GitHub URLs, and the requests made."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root, self.requests, self._mp = root, [], monkeypatch

    def publish(self, name: str, data: bytes, *, pinned: bytes | None = None) -> None:
        """Serve `data` as the file `name`; pin it to `pinned` (default: `data` itself)."""
        spec = public.FILES[name]
        target = self.root / spec.commit / spec.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        pin = data if pinned is None else pinned
        self._mp.setitem(public.FILES, name, dataclasses.replace(
            spec, size=len(pin), sha256=hashlib.sha256(pin).hexdigest()))


@pytest.fixture
def served(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    state = Served(root, monkeypatch)

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            state.requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(public.DATA_URL_ENV, f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("BPO_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(public.DATA_DIR_ENV, raising=False)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def cached_files() -> list[str]:
    folder = public.cache_dir()
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.is_dir() else []


def test_downloads_once_then_reuses_the_cache(served, fixture_data):
    data = (fixture_data / "testset_vicuna.jsonl").read_bytes()
    served.publish("vicuna_eval", data)
    path = resolve_input("bpo:vicuna_eval")
    assert Path(path) == public.cache_dir() / "vicuna_eval.jsonl" and Path(path).read_bytes() == data
    spec = public.FILES["vicuna_eval"]
    assert served.requests == [f"/{spec.commit}/data/testset/vicuna_eval.jsonl"]
    assert resolve_input("bpo:vicuna_eval") == path and len(served.requests) == 1
    assert cached_files() == ["vicuna_eval.jsonl"]  # no temp file left behind


def test_a_damaged_cached_copy_is_fetched_again(served, fixture_data):
    data = (fixture_data / "testset_dolly.json").read_bytes()
    served.publish("dolly_eval", data)
    path = Path(resolve_input("bpo:dolly_eval"))
    path.write_bytes(data[:-10])
    assert resolve_input("bpo:dolly_eval") == str(path) and path.read_bytes() == data
    assert len(served.requests) == 2


def test_parallel_resolves_download_once(served, fixture_data):
    served.publish("bpo_test", (fixture_data / "pairs_bpo_test.json").read_bytes())
    with ThreadPoolExecutor(4) as pool:
        paths = set(pool.map(lambda _: resolve_input("bpo:bpo_test"), range(4)))
    assert len(paths) == 1 and len(served.requests) == 1


def test_checksum_mismatch_is_an_error_and_caches_nothing(served, fixture_data):
    data = (fixture_data / "feedback_ctx.json").read_bytes()
    served.publish("examples_ctx", data.replace(b"Monday", b"Friday"), pinned=data)
    with pytest.raises(InputError, match=r"bpo:examples_ctx: .* expected \d+ bytes with SHA-256 .*nothing was cached"):
        resolve_input("bpo:examples_ctx")
    assert cached_files() == []
    served.publish("examples_ctx", data[:-1], pinned=data)  # a short read: the size differs
    with pytest.raises(InputError, match="nothing was cached"):
        resolve_input("bpo:examples_ctx")
    assert cached_files() == []


def test_no_network_says_to_set_the_data_dir(served, monkeypatch):
    with pytest.raises(InputError, match="bpo:dolly_eval: cannot download .*HTTP Error 404"):  # not served
        resolve_input("bpo:dolly_eval")
    monkeypatch.setenv(public.DATA_URL_ENV, f"http://127.0.0.1:{free_port()}")  # nothing listens
    with pytest.raises(InputError, match="bpo:dolly_eval: cannot download .*set BPO_RAY_DATA_DIR to a folder "
                                         "holding dolly_eval.json"):
        resolve_input("bpo:dolly_eval")
    assert cached_files() == []


def test_data_dir_wins_over_the_download(served, tmp_path, monkeypatch, fixture_data):
    served.publish("vicuna_eval", b"served\n")
    local = tmp_path / "mine"
    local.mkdir()
    (local / "vicuna_eval.jsonl").write_bytes((fixture_data / "testset_vicuna.jsonl").read_bytes())
    monkeypatch.setenv(public.DATA_DIR_ENV, str(local))
    assert resolve_input("bpo:vicuna_eval") == str(local / "vicuna_eval.jsonl")
    with pytest.raises(InputError, match=r"bpo:dolly_eval: .*mine/dolly_eval.json not found \(BPO_RAY_DATA_DIR is set"):
        resolve_input("bpo:dolly_eval")
    assert served.requests == [] and cached_files() == []


def test_unknown_names_list_the_known_ones_and_other_paths_pass_through(served):
    with pytest.raises(InputError, match="bpo:nope: unknown public BPO file; known: bpo:vicuna_eval, .*bpo:feedback_val"):
        resolve_input("bpo:nope")
    assert resolve_inputs(["a.json", "s3://bucket/x", "/tmp/b.jsonl"]) == ["a.json", "s3://bucket/x", "/tmp/b.jsonl"]
    assert served.requests == []


def test_train_input_files_accept_bpo_names(served, fixture_data, tmp_path):
    from bpo_ray.train.data import input_files

    served.publish("bpo_test", (fixture_data / "pairs_bpo_test.json").read_bytes())
    other = tmp_path / "other.json"
    other.write_text("[]")
    assert input_files(["bpo:bpo_test", str(other)]) == [str(public.cache_dir() / "bpo_test.json"), str(other)]


def test_read_feedback_accepts_bpo_names(served, fixture_data, ray_local):
    from bpo_ray.data.feedback import FeedbackFields, read_feedback

    served.publish("examples_ctx", (fixture_data / "feedback_ctx.json").read_bytes())
    served.publish("examples_no_ctx", (fixture_data / "feedback_no_ctx.json").read_bytes())
    rows = read_feedback(["bpo:examples_ctx", "bpo:examples_no_ctx"], FeedbackFields(), max_input_chars=10_000,
                         key_salt="t").take_all()
    assert sorted((r["source"], r["has_context"]) for r in rows) == [
        ("examples_ctx.json:0", True), ("examples_ctx.json:1", True),
        ("examples_no_ctx.json:0", False), ("examples_no_ctx.json:1", False)]
    assert len(served.requests) == 2


def test_fetch_data_cli(tmp_path, fixture_data):
    env = {**os.environ, "BPO_RAY_CACHE": str(tmp_path / "cache"), public.DATA_URL_ENV: f"http://127.0.0.1:{free_port()}"}
    env.pop(public.DATA_DIR_ENV, None)
    out = subprocess.run([BPO_RAY, "fetch-data", "nope"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "unknown public BPO file" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([BPO_RAY, "fetch-data", "dolly_eval"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "set BPO_RAY_DATA_DIR to a folder" in " ".join(out.stderr.split())  # rich wraps

    local = tmp_path / "mine"
    local.mkdir()
    (local / "vicuna_eval.jsonl").write_bytes((fixture_data / "testset_vicuna.jsonl").read_bytes())
    out = subprocess.run([BPO_RAY, "fetch-data", "bpo:vicuna_eval"], capture_output=True, text=True,
                         env={**env, public.DATA_DIR_ENV: str(local)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"bpo:vicuna_eval\t{local / 'vicuna_eval.jsonl'}\t(differs from the pinned thu-coai/BPO file)\n"
