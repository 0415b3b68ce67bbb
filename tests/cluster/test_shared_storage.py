"""Train's output on any filesystem pyarrow opens: the model folder is copied there, and a URI
never becomes a local folder named after its scheme."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs

from bpo_ray.optimizer_template import OptimizerTemplate
from bpo_ray.train import export
from bpo_ray.train.export import TRAIN_CONFIG_FILE, finish_output

TEMPLATE = OptimizerTemplate(style="chat", instruction="Rewrite:")
WEIGHTS = b"\x00\x01weights" * 100


def exported_model(root: Path) -> Path:
    """What rank 0 leaves in the final checkpoint: an HF folder (one nested file, too)."""
    folder = root / "checkpoint_000001" / export.MODEL_SUBDIR
    (folder / "extra").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "extra" / "notes.txt").write_text("nested")
    return folder


def finish(model_dir: Path, output: str) -> str:
    return finish_output(model_dir, output, template=TEMPLATE, train_config={"epochs": 1, "deepspeed": {}},
                         metrics={"loss": 0.5})


EXPECTED = {"model.safetensors", "config.json", "extra/notes.txt", "bpo_template.json", TRAIN_CONFIG_FILE, "README.md"}


def files_under(fs: pafs.FileSystem, base: str) -> set[str]:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return {i.path.removeprefix(base.rstrip("/") + "/") for i in infos if i.type == pafs.FileType.File}


def test_file_uri_output_lands_at_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a URI taken for a path would become a folder 'file:'
    target = tmp_path / "shared" / "optimizer"
    finish(exported_model(tmp_path), f"file://{target}")
    assert files_under(pafs.LocalFileSystem(), str(target)) == EXPECTED
    assert (target / "model.safetensors").read_bytes() == WEIGHTS
    assert OptimizerTemplate.load(target) == TEMPLATE
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(":")]


def test_plain_path_output_still_works_and_updates_in_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "opt").mkdir(parents=True)
    (tmp_path / "runs" / "opt" / "model.safetensors").write_bytes(b"old")
    finish(exported_model(tmp_path), "runs/opt")  # relative, as users type it
    assert files_under(pafs.LocalFileSystem(), str(tmp_path / "runs" / "opt")) == EXPECTED
    assert (tmp_path / "runs" / "opt" / "model.safetensors").read_bytes() == WEIGHTS


def test_output_on_another_filesystem(tmp_path, monkeypatch):
    """An s3:// or gs:// output goes through pyarrow's filesystem for it: pyarrow's in-memory
    mock filesystem stands in for the bucket (no S3 here), reached the way a URI is."""
    bucket = pafs._MockFileSystem()
    seen = []

    def resolve(uri: str):
        seen.append(uri)
        return bucket, "bucket/optimizer"

    monkeypatch.setattr(export, "filesystem_and_path", resolve)
    monkeypatch.chdir(tmp_path)
    assert finish(exported_model(tmp_path), "s3://bucket/optimizer") == "s3://bucket/optimizer"
    assert seen == ["s3://bucket/optimizer"]
    assert files_under(bucket, "bucket/optimizer") == EXPECTED
    with bucket.open_input_stream("bucket/optimizer/model.safetensors") as f:
        assert f.read() == WEIGHTS
    with bucket.open_input_stream(f"bucket/optimizer/{TRAIN_CONFIG_FILE}") as f:
        assert json.loads(f.read())["epochs"] == 1
    assert not list(tmp_path.glob("s3*"))


def test_the_pipeline_finds_a_finished_model_at_a_uri(tmp_path: Path) -> None:
    """A re-run of the pipeline skips training when the model is there, a URI output included."""
    from bpo_ray.data.ledger import write_summary
    from bpo_ray.pipeline.run import _finished_training

    output = (tmp_path / "optimizer").as_uri()
    assert _finished_training(output) is None  # nothing yet
    finish(exported_model(tmp_path / "ckpt"), output)
    write_summary(output, {"finished": False})
    assert _finished_training(output) is None  # a run that stopped midway
    write_summary(output, {"finished": True, "loss": 0.5})
    assert _finished_training(output) == {"finished": True, "loss": 0.5}
    assert _finished_training(str(tmp_path / "optimizer")) == {"finished": True, "loss": 0.5}


def test_a_model_at_a_uri_is_fetched_once_and_again_when_it_changes(tmp_path: Path, monkeypatch) -> None:
    """What train wrote to a URI, optimize and serve load: `resolve_model_path` gives a local
    copy, fetched once per machine, and fetched again after the folder there is rewritten."""
    from bpo_ray.models.embedded import resolve_model_path

    monkeypatch.setenv("BPO_RAY_CACHE", str(tmp_path / "cache"))
    output = (tmp_path / "bucket" / "optimizer").as_uri()
    finish(exported_model(tmp_path / "ckpt"), output)
    local = Path(resolve_model_path(output))
    assert local.is_dir() and local.is_relative_to(tmp_path / "cache")
    assert files_under(pafs.LocalFileSystem(), str(local)) == EXPECTED | {".complete"}
    assert (local / "model.safetensors").read_bytes() == WEIGHTS

    stamp = (local / ".complete").stat().st_mtime_ns
    assert Path(resolve_model_path(output)) == local and (local / ".complete").stat().st_mtime_ns == stamp

    (tmp_path / "bucket" / "optimizer" / "model.safetensors").write_bytes(b"retrained" * 10)
    assert Path(resolve_model_path(output)) == local
    assert (local / "model.safetensors").read_bytes() == b"retrained" * 10


def test_a_missing_model_uri_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import pytest

    from bpo_ray.errors import ModelUnavailableError
    from bpo_ray.models.embedded import resolve_model_path

    monkeypatch.setenv("BPO_RAY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelUnavailableError, match=r"model.model: .*model folder.*file://.*nothing"):
        resolve_model_path((tmp_path / "nothing").as_uri())


def test_resume_keys_follow_the_weights_at_a_uri(tmp_path: Path) -> None:
    from bpo_ray.models.weights import weights_fingerprint

    output = (tmp_path / "bucket" / "optimizer").as_uri()
    finish(exported_model(tmp_path / "ckpt"), output)
    first = weights_fingerprint(output)
    assert first == weights_fingerprint(output) and first != "unresolved"
    (tmp_path / "bucket" / "optimizer" / "model.safetensors").write_bytes(b"retrained" * 10)
    assert weights_fingerprint(output) != first
