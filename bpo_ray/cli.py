"""`bpo-ray` command line: a table from verb to the entry function of its folder.

Flags override the YAML given with --config; help texts come from the config classes' field
descriptions, so the two never disagree.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from bpo_ray.errors import BpoRayError
from bpo_ray.terminal import console  # one stderr console for logs, progress and errors

app = typer.Typer(
    name="bpo-ray",
    help="Black-Box Prompt Optimization on Ray: construct, train, optimize, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _model_overrides(prefix: str, *, model: str | None, base_url: str | None, api_key_env: str | None,
                     concurrency: int | None, batch_size: int | None, rate_limit: float | None,
                     tokens_per_min: float | None, temperature: float | None,
                     max_tokens: int | None) -> dict[str, Any]:
    overrides = {
        f"{prefix}.model": model, f"{prefix}.base_url": base_url, f"{prefix}.api_key_env": api_key_env,
        f"{prefix}.concurrency": concurrency, f"{prefix}.batch_size": batch_size,
        f"{prefix}.rate_limit.requests_per_s": rate_limit,
        f"{prefix}.rate_limit.tokens_per_min": tokens_per_min, f"{prefix}.sampling.temperature": temperature,
        f"{prefix}.sampling.max_tokens": max_tokens,
    }
    if base_url:
        # An endpoint means the HTTP backend; no extra flag to remember.
        overrides[f"{prefix}.provider"] = "openai"
    return overrides


def _fail(exc: BpoRayError) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def _setup_logging(verbose: bool) -> None:
    from bpo_ray.terminal import setup_console_logging

    setup_console_logging(verbose)


def print_summary(title: str, summary: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)


@app.command()
def construct(
    input: list[str] = typer.Option(None, "--input", "-i", help="Feedback files or folders (repeatable). " "JSON, JSONL, Parquet; paths or URIs."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output folder; re-running resumes."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config; flags override it."),
    model: Optional[str] = typer.Option(None, help="Model name, HF folder, or 'embedded' (default)."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible API base URL (…/v1); selects the HTTP backend."),
    api_key_env: Optional[str] = typer.Option(None, help="Env var holding the API key (default: OPENAI_API_KEY)."),
    concurrency: Optional[int] = typer.Option(None, help="HTTP requests in flight per actor (default: 64, 2 actors)."),
    batch_size: Optional[int] = typer.Option(None, help="Prompts per generate call of a local model (default: 16)."),
    rate_limit: Optional[float] = typer.Option(None, help="Requests per second over the whole job."),
    tokens_per_min: Optional[float] = typer.Option(None, help="Tokens per minute over the whole job."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default: 0, greedy)."),
    max_tokens: Optional[int] = typer.Option(None, help="Most tokens per reply (default: 256)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N input rows."),
    num_actors: Optional[int] = typer.Option(None, help="Stage actors (default: 2 for HTTP, 1 for local)."),
    output_format: Optional[str] = typer.Option(None, "--format", help="parquet (default) or jsonl."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join (default: RAY_ADDRESS, else local)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Build (prompt, optimized prompt) pairs from pairwise feedback with an LLM."""
    from bpo_ray.config import load_config
    from bpo_ray.construct.config import ConstructConfig

    _setup_logging(verbose)
    overrides = {"input": input or None, "output": output, "limit": limit, "num_actors": num_actors,
                 "output_format": output_format, "ray_address": ray_address,
                 **_model_overrides("model", model=model, base_url=base_url, api_key_env=api_key_env,
                                    concurrency=concurrency, batch_size=batch_size, rate_limit=rate_limit,
                                    tokens_per_min=tokens_per_min,
                                    temperature=temperature, max_tokens=max_tokens)}
    try:
        cfg = load_config(ConstructConfig, config, overrides)
        from bpo_ray.construct.job import run_construct

        summary = run_construct(cfg)
    except BpoRayError as exc:
        _fail(exc)
    print_summary("construct summary", summary)


@app.command()
def train(
    input: list[str] = typer.Option(None, "--input", "-i", help="Pairs: a construct output folder, or JSON/JSONL/Parquet pair files (repeatable)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Folder for the trained optimizer (HF format + template + card)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config; flags override it."),
    base_model: Optional[str] = typer.Option(None, help="HF id, local folder, or 'embedded' (default)."),
    num_workers: Optional[int] = typer.Option(None, help="Training workers, one GPU each when present (default: 2)."),
    zero_stage: Optional[int] = typer.Option(None, help="DeepSpeed ZeRO stage 0-3 (default: 2, optimizer offloaded)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: 3)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: 2e-5, 10% linear warm-up, linear decay)."),
    max_length: Optional[int] = typer.Option(None, help="Most tokens per example (default: 512)."),
    run_name: Optional[str] = typer.Option(None, help="Ray Train run name; the same name resumes (default: from --output)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N input rows."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join (default: RAY_ADDRESS, else local)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Fine-tune the prompt optimizer with Ray Train + DeepSpeed."""
    _setup_logging(verbose)
    overrides = {"input": input or None, "output": output, "base_model": base_model, "num_workers": num_workers,
                 "deepspeed.zero_stage": zero_stage, "epochs": epochs, "lr": lr, "max_length": max_length,
                 "run_name": run_name, "limit": limit, "ray_address": ray_address}
    try:
        from bpo_ray.train.job import train_from_cli

        summary = train_from_cli(overrides, str(config) if config else None)
    except BpoRayError as exc:
        _fail(exc)
    print_summary("train summary", summary)


@app.command("serve-model")
def serve_model(
    model: str = typer.Option("embedded", help="Local model: HF folder or 'embedded'."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="HTTP port."),
    batch_size: int = typer.Option(16, help="Requests batched into one generate call per replica."),
    replicas: int = typer.Option(1, help="Model replicas (one model per replica)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    gpus: Optional[float] = typer.Option(None, help="GPUs per replica (default: 1 when the cluster has GPUs and --device is auto or cuda)."),
) -> None:
    """Serve a local model behind an OpenAI-compatible API (Ray Serve) until Ctrl-C."""
    import time

    from bpo_ray.models.spec import ModelSpec
    from bpo_ray.ray_utils import ensure_ray
    from bpo_ray.serve.model_server import start_model_server

    _setup_logging(False)
    try:
        spec = ModelSpec(provider="local", model=model, batch_size=batch_size, device=device)
        ensure_ray()
        url = start_model_server(spec, host=host, port=port, num_replicas=replicas, num_gpus=gpus)
    except BpoRayError as exc:
        _fail(exc)
    console.print(f"[green]serving[/] {model} at {url}  (GET {url}/models, POST {url}/chat/completions)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@app.command()
def demo(
    output: str = typer.Option("runs/demo", help="Where the demo writes its outputs."),
    port: int = typer.Option(8011, help="Port of the demo's model server."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N demo rows."),
    train: bool = typer.Option(True, help="Also fine-tune the embedded model on the pairs (Ray Train + DeepSpeed)."),
) -> None:
    """End to end on the embedded default: serve SmolLM2-135M over the OpenAI-compatible API on
    a local Ray, construct optimized prompts from the bundled sample feedback, fine-tune on them."""
    from bpo_ray.demo import run_demo

    _setup_logging(False)
    try:
        summary = run_demo(output=output, port=port, limit=limit, train=train)
    except BpoRayError as exc:
        _fail(exc)
    print_summary("construct summary (demo)", summary)


@app.command("fetch-data")
def fetch_data(
    names: Optional[list[str]] = typer.Argument(None, help="Public BPO files (default: all), e.g. vicuna_eval or bpo:dolly_eval."),
) -> None:
    """Download and verify the public BPO data files (thu-coai/BPO, Apache-2.0) once, and print
    where they are; any `--input bpo:NAME` then reads them (BPO_RAY_DATA_DIR overrides)."""
    from bpo_ray.data.public import FILES, PREFIX, is_pinned, public_file

    _setup_logging(False)
    try:
        for name in [n.removeprefix(PREFIX) for n in names or FILES]:
            path = public_file(name)
            note = "" if is_pinned(name, path) else "\t(differs from the pinned thu-coai/BPO file)"
            print(f"{PREFIX}{name}\t{path}{note}")
    except BpoRayError as exc:
        _fail(exc)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
