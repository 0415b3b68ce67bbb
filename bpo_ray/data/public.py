"""Named public BPO data files: `--input bpo:vicuna_eval` and friends.

The files belong to thu-coai/BPO (Apache-2.0) and are not shipped with the project. A name
resolves to `$BPO_RAY_DATA_DIR/<file>` when that variable is set (an offline copy wins), else
to a per-machine cache filled once from the repository's raw files, pinned to a commit and
checked by size and SHA-256, so every run reads the exact bytes the paper's numbers came from.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bpo_ray.errors import InputError

log = logging.getLogger(__name__)

PREFIX = "bpo:"
DATA_DIR_ENV = "BPO_RAY_DATA_DIR"
DATA_URL_ENV = "BPO_RAY_DATA_URL"
DEFAULT_DATA_URL = "https://raw.githubusercontent.com/thu-coai/BPO"
# The newest commit (2024-06-24): its test sets and construction examples are the ones the
# paper's README links to. The first release (2023-11-07) is the last to hold the validation
# feedback; later commits moved the training data to the hub dataset THUDM/BPO.
LATEST = "9bf541587d1456fda6ffa46001ab545e892f4a2c"
FIRST_RELEASE = "eef4e1f70b7045c739459888c9e9afa69a71e900"
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PublicFile:
    """One pinned file: its name in a data folder or the cache, and where it comes from."""

    filename: str
    commit: str
    path: str
    size: int
    sha256: str


FILES: dict[str, PublicFile] = {
    "vicuna_eval": PublicFile("vicuna_eval.jsonl", LATEST, "data/testset/vicuna_eval.jsonl", 12884,
                              "32b519315704d3da88accb0cab4fd44622ff530fe49e450c1553030ce3e0f962"),
    "self_instruct_eval": PublicFile("self_instruct_eval.json", LATEST, "data/testset/self_instruct_eval.json", 177058,
                                     "80525efd67f3af6691e960f173c78a4331af3311d0b8ac6b7da80db7a246d629"),
    "dolly_eval": PublicFile("dolly_eval.json", LATEST, "data/testset/dolly_eval.json", 193937,
                             "7e424485b167e5c0a092a9eb2b8d9d1bd550c34ffcd0352e20938c1cedd7c0ab"),
    "bpo_test": PublicFile("bpo_test.json", LATEST, "data/testset/bpo_test.json", 286433,
                           "232bc4ba002e0df05da7bc3351978ce28856e036eb96053b3eecc93ca6a43e71"),
    "examples_ctx": PublicFile("examples_ctx.json", LATEST, "data/data_construction/examples_ctx.json", 5307,
                               "c6edcf584696c3507e7f837e1f0dbedad85f5af94a83efa24919f44e6df41eaf"),
    "examples_no_ctx": PublicFile("examples_no_ctx.json", LATEST, "data/data_construction/examples_no_ctx.json", 2372,
                                  "60a138bb79d87f894a9d7abfe6cd81de358f02bcd26be2d0e5b1357ff1b944f7"),
    "feedback_val": PublicFile("feedback_val_300.json", FIRST_RELEASE, "data/train_data/val.json", 879132,
                               "d320cd45293ab3ebc1b268ff4862db33de46262ceb860d9951b5d05f788da0f6"),
}


DEMO_PREFIX = "demo:"
"""`demo:feedback`, `demo:prompts`: the project's own sample data, shipped in the package."""


def resolve_input(path: str) -> str:
    """A local path for a `bpo:NAME` input (downloading it once if needed) or a `demo:NAME`
    one (the packaged sample data); other paths unchanged."""
    if path.startswith(DEMO_PREFIX):
        return demo_file(path[len(DEMO_PREFIX):])
    if not path.startswith(PREFIX):
        return path
    return str(public_file(path[len(PREFIX):]))


def demo_file(name: str) -> str:
    from importlib.resources import files

    folder = files("bpo_ray") / "demo_data"
    found = folder / f"{name}.jsonl"
    if not found.is_file():
        names = sorted(p.name.removesuffix(".jsonl") for p in folder.iterdir() if p.name.endswith(".jsonl"))
        raise InputError(f"input: {DEMO_PREFIX}{name}: no such sample data (have: {', '.join(names)})")
    return str(found)


def resolve_inputs(paths: list[str]) -> list[str]:
    return [resolve_input(p) for p in paths]


def public_file(name: str) -> Path:
    """The local copy of the named file: from BPO_RAY_DATA_DIR when set, else the cache."""
    spec = _spec(name)
    if data_dir := os.environ.get(DATA_DIR_ENV):
        local = Path(data_dir).expanduser() / spec.filename
        if not local.is_file():
            raise InputError(f"{PREFIX}{name}: {local} not found ({DATA_DIR_ENV} is set, so nothing is downloaded)")
        return local
    return _cached(name, spec)


def is_pinned(name: str, path: Path) -> bool:
    """Whether a local file holds exactly the pinned bytes (a user's own copy may not)."""
    return _matches(path, _spec(name))


def cache_dir() -> Path:
    from bpo_ray.models.cache import cache_root

    return cache_root() / "data" / "bpo"


def url_of(spec: PublicFile) -> str:
    base = os.environ.get(DATA_URL_ENV) or DEFAULT_DATA_URL
    return f"{base.rstrip('/')}/{spec.commit}/{spec.path}"


def _spec(name: str) -> PublicFile:
    if name not in FILES:
        raise InputError(f"{PREFIX}{name}: unknown public BPO file; known: "
                         + ", ".join(PREFIX + n for n in FILES))
    return FILES[name]


def _cached(name: str, spec: PublicFile) -> Path:
    from filelock import FileLock

    target = cache_dir() / spec.filename
    if _matches(target, spec):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One download per machine: parallel processes wait here, then find the file in place.
    with FileLock(str(target) + ".lock"):
        if _matches(target, spec):
            return target
        _download(name, spec, target)
    return target


def _matches(path: Path, spec: PublicFile) -> bool:
    """The cached copy is whole and the pinned one (a truncated or edited file is fetched again)."""
    return path.is_file() and path.stat().st_size == spec.size and _sha256(path.read_bytes()) == spec.sha256


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(name: str, spec: PublicFile, target: Path) -> None:
    """Fetch, check, then rename into place: the cache never holds a partial or wrong file."""
    url = url_of(spec)
    log.info("downloading %s%s from %s", PREFIX, name, url)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
            data = reply.read()
    except (OSError, http.client.HTTPException) as exc:  # URLError and HTTPError are OSErrors
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
        raise InputError(f"{PREFIX}{name}: cannot download {url} ({reason}); without network, set {DATA_DIR_ENV} "
                         f"to a folder holding {spec.filename} (a copy of thu-coai/BPO's data files)") from None
    if len(data) != spec.size or _sha256(data) != spec.sha256:
        raise InputError(f"{PREFIX}{name}: {url} gave {len(data)} bytes with SHA-256 {_sha256(data)}, expected "
                         f"{spec.size} bytes with SHA-256 {spec.sha256}; nothing was cached")
    fd, tmp = tempfile.mkstemp(prefix=f".{spec.filename}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
