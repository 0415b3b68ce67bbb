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
    help="Black-Box Prompt Optimization on Ray: construct, train, optimize, generate, evaluate, report, pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


PROVIDERS = ("local", "openai", "vllm")


def _model_overrides(prefix: str, *, model: str | None = None, base_url: str | None = None,
                     api_key_env: str | None = None, provider: str | None = None, concurrency: int | None = None,
                     batch_size: int | None = None, rate_limit: float | None = None,
                     tokens_per_min: float | None = None, temperature: float | None = None,
                     max_tokens: int | None = None) -> dict[str, Any]:
    if provider is not None and provider not in PROVIDERS:
        raise typer.BadParameter(f"{provider!r} is not one of {', '.join(PROVIDERS)}", param_hint="--provider")
    overrides = {
        f"{prefix}.model": model, f"{prefix}.base_url": base_url, f"{prefix}.api_key_env": api_key_env,
        f"{prefix}.concurrency": concurrency, f"{prefix}.batch_size": batch_size,
        f"{prefix}.rate_limit.requests_per_s": rate_limit,
        f"{prefix}.rate_limit.tokens_per_min": tokens_per_min, f"{prefix}.sampling.temperature": temperature,
        f"{prefix}.sampling.max_tokens": max_tokens,
        # An endpoint means the HTTP backend unless --provider says otherwise.
        f"{prefix}.provider": provider or ("openai" if base_url else None),
    }
    return overrides


def _fields(prompt_field: str | None, context_field: str | None, id_field: str | None) -> dict[str, Any]:
    return {"fields.prompt": [prompt_field] if prompt_field else None,
            "fields.context": [context_field] if context_field else None,
            "fields.id": [id_field] if id_field else None}


def _run_job(title: str, config_cls: Any, config: Path | None, overrides: dict[str, Any], run: Any,
             show: Any = None) -> None:
    """Load the config (file + flags), run the job, print its summary; a BpoRayError is one line."""
    from bpo_ray.config import load_config

    try:
        summary = run(load_config(config_cls, config, overrides))
    except BpoRayError as exc:
        _fail(exc)
    (show or print_summary)(title, summary)


def _fail(exc: BpoRayError) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(exc))}")  # a message may hold [brackets]
    raise typer.Exit(2)


def _setup_logging(verbose: bool) -> None:
    from bpo_ray.terminal import setup_console_logging

    setup_console_logging(verbose)


def print_summary(title: str, summary: dict[str, Any], *, skip: tuple[str, ...] = ()) -> None:
    from rich.text import Text

    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in summary.items():
        if key not in skip:  # Text: brackets in values ([0.1, 0.3]) are data, not rich markup
            table.add_row(key, Text(json.dumps(value) if isinstance(value, (dict, list)) else str(value)))
    Console().print(table)


# evaluate's statistics: shown as a table of groups, not as JSON lines (all in summary.json).
EVALUATE_GROUPS = ("overall", "by_dataset", "by_target", "by_category", "by_target_dataset", "mean_delta_wr_by_target")


def print_evaluate_summary(title: str, summary: dict[str, Any]) -> None:
    from bpo_ray.report.report import groups_table

    print_summary(title, summary, skip=EVALUATE_GROUPS)
    if summary.get("overall"):
        groups = {"overall": summary["overall"],
                  **{f"dataset {k}": v for k, v in summary["by_dataset"].items()},
                  **({f"target {k}": v for k, v in summary["by_target"].items()} if len(summary["by_target"]) > 1 else {})}
        Console().print(groups_table("win / tie / lose of the optimized prompt's answer (statistics: summary.json)",
                                     groups))


# Options several verbs share (typer reads them from each signature).
OUTPUT = typer.Option(None, "--output", "-o", help="Output folder; re-running into it resumes.")
CONFIG = typer.Option(None, "--config", "-c", help="YAML config; flags override it.")
BASE_URL = typer.Option(None, help="OpenAI-compatible API base URL (…/v1); selects the HTTP backend.")
API_KEY_ENV = typer.Option(None, help="Env var holding the API key (default: OPENAI_API_KEY).")
PROVIDER = typer.Option(None, help="local (transformers in-process), vllm (a vLLM engine per actor) or openai "
                        "(any OpenAI-compatible API; the default with --base-url).")
CONCURRENCY = typer.Option(None, help="HTTP requests in flight per actor (default: 64, 2 actors).")
BATCH_SIZE = typer.Option(None, help="Prompts per generate call of a local model (default: 16).")
RATE_LIMIT = typer.Option(None, help="Requests per second over the whole job.")
LIMIT = typer.Option(None, help="Use only the first N input rows.")
NUM_ACTORS = typer.Option(None, help="Stage actors (default: 2 for HTTP, 1 for local).")
FORMAT = typer.Option(None, "--format", help="parquet (default) or jsonl.")
RAY_ADDRESS = typer.Option(None, help="Ray cluster to join (default: RAY_ADDRESS, else local).")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Debug logging.")
PROMPT_FIELD = typer.Option(None, help="Input field with the prompt (default: prompt|instruction|text|question|turns).")
CONTEXT_FIELD = typer.Option(None, help="Input field with the context (default: context|input).")
ID_FIELD = typer.Option(None, help="Input field with the row id (default: id|idx|question_id).")


def _job_overrides(*, input: list[str] | None, output: str | None, limit: int | None, num_actors: int | None,
                   output_format: str | None, ray_address: str | None) -> dict[str, Any]:
    return {"input": input or None, "output": output, "limit": limit, "num_actors": num_actors,
            "output_format": output_format, "ray_address": ray_address}


@app.command()
def construct(
    input: list[str] = typer.Option(None, "--input", "-i", help="Feedback files or folders (repeatable). " "JSON, JSONL, Parquet; paths or URIs."),
    output: Optional[str] = OUTPUT,
    config: Optional[Path] = CONFIG,
    model: Optional[str] = typer.Option(None, help="Model name, HF folder, or 'embedded' (default)."),
    base_url: Optional[str] = BASE_URL,
    api_key_env: Optional[str] = API_KEY_ENV,
    provider: Optional[str] = PROVIDER,
    concurrency: Optional[int] = CONCURRENCY,
    batch_size: Optional[int] = BATCH_SIZE,
    rate_limit: Optional[float] = RATE_LIMIT,
    tokens_per_min: Optional[float] = typer.Option(None, help="Tokens per minute over the whole job."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default: 0, greedy)."),
    max_tokens: Optional[int] = typer.Option(None, help="Most tokens per reply (default: 256)."),
    limit: Optional[int] = LIMIT,
    num_actors: Optional[int] = NUM_ACTORS,
    output_format: Optional[str] = FORMAT,
    ray_address: Optional[str] = RAY_ADDRESS,
    verbose: bool = VERBOSE,
) -> None:
    """Build (prompt, optimized prompt) pairs from pairwise feedback with an LLM."""
    from bpo_ray.construct.config import ConstructConfig
    from bpo_ray.construct.job import run_construct

    _setup_logging(verbose)
    overrides = {**_job_overrides(input=input, output=output, limit=limit, num_actors=num_actors,
                                  output_format=output_format, ray_address=ray_address),
                 **_model_overrides("model", model=model, base_url=base_url, api_key_env=api_key_env,
                                    provider=provider, concurrency=concurrency, batch_size=batch_size,
                                    rate_limit=rate_limit, tokens_per_min=tokens_per_min,
                                    temperature=temperature, max_tokens=max_tokens)}
    _run_job("construct summary", ConstructConfig, config, overrides, run_construct)


@app.command()
def optimize(
    input: list[str] = typer.Option(None, "--input", "-i", help="Prompt files or folders (repeatable): test sets, "
                                    "instruction data, a job's output; JSON, JSONL, Parquet, or bpo:NAME."),
    output: Optional[str] = OUTPUT,
    config: Optional[Path] = CONFIG,
    optimizer: Optional[str] = typer.Option(None, help="A `bpo-ray train` folder, a plain HF folder, 'embedded' "
                                            "(default), or a model name behind --base-url."),
    template: Optional[str] = typer.Option(None, help="Prompt layout: bpo-ray, chat, bpo-llama2 (the released BPO "
                                           "model's) or a bpo_template.json (default: the optimizer folder's own)."),
    mode: Optional[str] = typer.Option(None, help="stable (default; the paper's sampling), aggressive, greedy."),
    candidates: Optional[int] = typer.Option(None, help="Aggressive mode: samples per prompt (default: 5)."),
    keep_all: Optional[bool] = typer.Option(None, "--keep-all", help="Aggressive mode: keep every usable candidate too."),
    min_similarity: Optional[float] = typer.Option(None, help="Semantic gate: reject rewrites whose embedding "
                                                   "similarity to the prompt is below this (0-1)."),
    base_url: Optional[str] = BASE_URL,
    api_key_env: Optional[str] = API_KEY_ENV,
    provider: Optional[str] = PROVIDER,
    prompt_field: Optional[str] = PROMPT_FIELD,
    context_field: Optional[str] = CONTEXT_FIELD,
    id_field: Optional[str] = ID_FIELD,
    concurrency: Optional[int] = CONCURRENCY,
    batch_size: Optional[int] = BATCH_SIZE,
    rate_limit: Optional[float] = RATE_LIMIT,
    max_tokens: Optional[int] = typer.Option(None, help="Most tokens per rewrite (default: 512)."),
    limit: Optional[int] = LIMIT,
    num_actors: Optional[int] = NUM_ACTORS,
    output_format: Optional[str] = FORMAT,
    ray_address: Optional[str] = RAY_ADDRESS,
    verbose: bool = VERBOSE,
) -> None:
    """Rewrite prompts with the prompt optimizer (the paper's inference, in bulk)."""
    from bpo_ray.optimize.config import OptimizeConfig
    from bpo_ray.optimize.job import run_optimize

    _setup_logging(verbose)
    overrides = {**_job_overrides(input=input, output=output, limit=limit, num_actors=num_actors,
                                  output_format=output_format, ray_address=ray_address),
                 **_model_overrides("optimizer", model=optimizer, base_url=base_url, api_key_env=api_key_env,
                                    provider=provider, concurrency=concurrency, batch_size=batch_size,
                                    rate_limit=rate_limit, max_tokens=max_tokens),
                 **_fields(prompt_field, context_field, id_field),
                 "template": template, "mode": mode, "candidates": candidates, "keep_all": keep_all,
                 "semantic_gate.min_similarity": min_similarity}
    _run_job("optimize summary", OptimizeConfig, config, overrides, run_optimize)


def _targets(targets: list[str] | None, **model_flags: Any) -> list[dict] | None:
    """--target flags as target specs, each with the other model flags; None keeps the config's."""
    from bpo_ray.config import set_dotted

    if not targets:
        return None
    out = []
    for target in targets:
        flat = _model_overrides("t", model=target, **model_flags)
        spec: dict[str, Any] = {}
        for dotted, value in flat.items():
            if value is not None:
                set_dotted(spec, dotted.removeprefix("t."), value)
        out.append(spec)
    return out


@app.command()
def generate(
    input: list[str] = typer.Option(None, "--input", "-i", help="optimize's output folder, or files with a prompt "
                                    "and an optimized_prompt (repeatable)."),
    output: Optional[str] = OUTPUT,
    config: Optional[Path] = CONFIG,
    target: list[str] = typer.Option(None, "--target", "-t", help="Target model (repeatable): HF folder, 'embedded' "
                                     "(default), or a model name behind --base-url. Per-target endpoints: --config."),
    base_url: Optional[str] = BASE_URL,
    api_key_env: Optional[str] = API_KEY_ENV,
    provider: Optional[str] = PROVIDER,
    system_prompt: Optional[str] = typer.Option(None, help="System message before every prompt (both kinds)."),
    concurrency: Optional[int] = CONCURRENCY,
    batch_size: Optional[int] = BATCH_SIZE,
    rate_limit: Optional[float] = RATE_LIMIT,
    temperature: Optional[float] = typer.Option(None, help="Target sampling temperature (default: 0.7, the paper's)."),
    max_tokens: Optional[int] = typer.Option(None, help="Most tokens per answer (default: 1024)."),
    limit: Optional[int] = LIMIT,
    num_actors: Optional[int] = NUM_ACTORS,
    output_format: Optional[str] = FORMAT,
    ray_address: Optional[str] = RAY_ADDRESS,
    verbose: bool = VERBOSE,
) -> None:
    """Answer each row's original and optimized prompt with one or more target models."""
    from bpo_ray.generate.config import GenerateConfig
    from bpo_ray.generate.job import run_generate

    _setup_logging(verbose)
    overrides = {**_job_overrides(input=input, output=output, limit=limit, num_actors=num_actors,
                                  output_format=output_format, ray_address=ray_address),
                 "targets": _targets(target, base_url=base_url, api_key_env=api_key_env, provider=provider,
                                     concurrency=concurrency, batch_size=batch_size, rate_limit=rate_limit,
                                     temperature=temperature, max_tokens=max_tokens),
                 "system_prompt": system_prompt}
    _run_job("generate summary", GenerateConfig, config, overrides, run_generate)


@app.command("sft-rewrite")
def sft_rewrite(
    input: list[str] = typer.Option(None, "--input", "-i", help="Instruction data (instruction, input, output), "
                                    "repeatable; JSON, JSONL, Parquet."),
    output: Optional[str] = OUTPUT,
    config: Optional[Path] = CONFIG,
    optimizer: Optional[str] = typer.Option(None, help="The prompt optimizer (local folder or 'embedded')."),
    template: Optional[str] = typer.Option(None, help="Optimizer prompt layout (default: the folder's own)."),
    mode: Optional[str] = typer.Option(None, help="stable (default), aggressive, greedy."),
    target: Optional[str] = typer.Option(None, help="The model that writes `res`: HF folder, 'embedded', or a "
                                         "model name behind --base-url."),
    base_url: Optional[str] = typer.Option(None, help="The target's OpenAI-compatible API base URL (…/v1)."),
    api_key_env: Optional[str] = API_KEY_ENV,
    provider: Optional[str] = typer.Option(None, help="The target's provider: local, vllm or openai."),
    concurrency: Optional[int] = CONCURRENCY,
    rate_limit: Optional[float] = RATE_LIMIT,
    max_tokens: Optional[int] = typer.Option(None, help="Most tokens per answer (default: 1024)."),
    limit: Optional[int] = LIMIT,
    output_format: Optional[str] = FORMAT,
    ray_address: Optional[str] = RAY_ADDRESS,
    verbose: bool = VERBOSE,
) -> None:
    """Build BPO-improved SFT data: optimize each instruction, then answer the optimized one (one plan)."""
    from bpo_ray.sft_rewrite.config import SftRewriteConfig
    from bpo_ray.sft_rewrite.job import run_sft_rewrite

    _setup_logging(verbose)
    overrides = {**_job_overrides(input=input, output=output, limit=limit, num_actors=None,
                                  output_format=output_format, ray_address=ray_address),
                 **_model_overrides("optimizer", model=optimizer),
                 **_model_overrides("target", model=target, base_url=base_url, api_key_env=api_key_env,
                                    provider=provider, concurrency=concurrency, rate_limit=rate_limit,
                                    max_tokens=max_tokens),
                 "template": template, "mode": mode}
    _run_job("sft-rewrite summary", SftRewriteConfig, config, overrides, run_sft_rewrite)


@app.command()
def evaluate(
    input: list[str] = typer.Option(None, "--input", "-i", help="generate's output folder, or files with a prompt, "
                                    "optional context, original_response and optimized_response (repeatable)."),
    output: Optional[str] = OUTPUT,
    config: Optional[Path] = CONFIG,
    judge: Optional[str] = typer.Option(None, help="Judge model: a name behind --base-url, an HF folder, or "
                                        "'embedded' (default; a 135M judge tests the pipeline, not BPO)."),
    base_url: Optional[str] = BASE_URL,
    api_key_env: Optional[str] = API_KEY_ENV,
    provider: Optional[str] = PROVIDER,
    judge_prompt: Optional[str] = typer.Option(None, help="pairwise (default; [[A]]/[[B]]/[[C]]), ranking (JSON "
                                               "ranking, the paper's Claude judge), or a YAML/JSON prompt file."),
    orders: Optional[str] = typer.Option(None, help="both (default: each pair in either order; a flip is a tie) "
                                         "or random (one seeded order per pair, the paper's protocol)."),
    verdict: Optional[str] = typer.Option(None, help="text (default: parse the reply) or logprobs (P(A/B/C) at "
                                          "the verdict token)."),
    seed: Optional[int] = typer.Option(None, help="Seed of random orders and the bootstrap (default: 0)."),
    max_tokens: Optional[int] = typer.Option(None, help="Judge token budget for this run; the rest is reported "
                                             "as not judged and a re-run continues."),
    concurrency: Optional[int] = CONCURRENCY,
    batch_size: Optional[int] = BATCH_SIZE,
    rate_limit: Optional[float] = RATE_LIMIT,
    limit: Optional[int] = typer.Option(None, help="Judge only the first N pairs."),
    endpoint: Optional[str] = typer.Option(None, help="Live evaluation: a running `bpo-ray serve` graph's URL "
                                           "(…/v1); it answers the --input test set as --target and bpo/--target."),
    target: Optional[str] = typer.Option(None, help="With --endpoint: the served target X (default: embedded)."),
    endpoint_key_env: Optional[str] = typer.Option(None, help="With --endpoint: env var holding its API key."),
    num_actors: Optional[int] = NUM_ACTORS,
    output_format: Optional[str] = FORMAT,
    ray_address: Optional[str] = RAY_ADDRESS,
    verbose: bool = VERBOSE,
) -> None:
    """Judge the answers to original vs optimized prompts pairwise: win / tie / lose with a 95% CI
    (with --endpoint: A/B evaluation of a served BPO graph, X vs bpo/X)."""
    from bpo_ray.evaluate.config import EvaluateConfig
    from bpo_ray.evaluate.job import run_evaluate

    _setup_logging(verbose)
    overrides = {**_job_overrides(input=input, output=output, limit=limit, num_actors=num_actors,
                                  output_format=output_format, ray_address=ray_address),
                 **_model_overrides("judge", model=judge, base_url=base_url, api_key_env=api_key_env,
                                    provider=provider, concurrency=concurrency, batch_size=batch_size,
                                    rate_limit=rate_limit),
                 "judge_prompt": judge_prompt, "orders": orders, "verdict": verdict, "seed": seed,
                 "max_tokens": max_tokens, "endpoint.base_url": endpoint,
                 "endpoint.model": target if endpoint or target else None, "endpoint.api_key_env": endpoint_key_env}
    _run_job("evaluate summary", EvaluateConfig, config, overrides, run_evaluate, show=print_evaluate_summary)


@app.command()
def report(
    input: list[str] = typer.Option(None, "--input", "-i", help="evaluate output folders (repeatable)."),
    output: Optional[str] = OUTPUT,
    config: Optional[Path] = CONFIG,
    paper: Optional[bool] = typer.Option(None, "--paper/--no-paper", help="Set the paper's own figures (GPT-4 "
                                         "judge) beside this run's, labelled as the paper's."),
) -> None:
    """Write report.md (the paper's table layout, per-category breakdown) and chart.png from evaluate runs."""
    from bpo_ray.config import load_config
    from bpo_ray.report.report import ReportConfig, print_table, run_report

    _setup_logging(False)
    try:
        result = run_report(load_config(ReportConfig, config, {"input": input or None, "output": output,
                                                               "paper": paper}))
    except BpoRayError as exc:
        _fail(exc)
    print(print_table(result), end="")  # a wide plain table, readable in a log as on a terminal
    console.print(f"report: {result['report_md']}  chart: {result['chart_png']}")


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


@app.command("serve")
def serve_graph(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Serve YAML (optimizer, targets, deployments, auth); configs/serve-*.yaml."),
    optimizer: Optional[str] = typer.Option(None, help="The optimizer: a `bpo-ray train` folder, an HF folder or 'embedded' (default: embedded)."),
    target: Optional[list[str]] = typer.Option(None, help="A local target model (HF folder or 'embedded'); repeat for several (default: embedded)."),
    provider: Optional[str] = typer.Option(None, help="Engine of the optimizer and the --target models: local "
                                           "(transformers, the default) or vllm."),
    host: Optional[str] = typer.Option(None, help="Address to listen on (default 127.0.0.1; 0.0.0.0: every interface)."),
    port: Optional[int] = typer.Option(None, help="HTTP port (default 8000)."),
    verbose: bool = VERBOSE,
) -> None:
    """Serve the optimizer and the target models as one Ray Serve graph behind an
    OpenAI-compatible API (X and bpo/X per target, /v1/optimize) until Ctrl-C."""
    import time

    from bpo_ray.config import load_config
    from bpo_ray.ray_utils import ensure_ray
    from bpo_ray.serve.config import ServeConfig
    from bpo_ray.serve.graph import start_graph

    _setup_logging(verbose)
    if provider not in (None, "local", "vllm"):
        raise typer.BadParameter(f"{provider!r} is not local or vllm (API targets: --config)", param_hint="--provider")
    overrides: dict[str, Any] = {"optimizer.model": optimizer, "optimizer.provider": provider, "host": host,
                                 "port": port}
    if target:
        overrides["targets"] = [{"model": t} for t in target]
    try:
        cfg = load_config(ServeConfig, str(config) if config else None, overrides)
        if provider:  # the engine of every in-process target; API targets stay as they are
            cfg = cfg.model_copy(update={"targets": [
                t.model_copy(update={"provider": provider}) if not t.is_http else t for t in cfg.targets]})
        console.print(f"starting the graph: optimizer {cfg.optimizer.display_name()}, targets "
                      f"{', '.join(t.target_name() for t in cfg.targets)} (models load in their replicas)",
                      highlight=False)
        ensure_ray()
        url = start_graph(cfg)
    except BpoRayError as exc:
        _fail(exc)
    names = [t.target_name() for t in cfg.targets]
    console.print(f"[green]serving[/] at {url}: models {', '.join(n for t in names for n in (t, 'bpo/' + t))}\n"
                  f"  POST {url}/chat/completions · POST {url}/optimize · GET {url}/models · "
                  f"GET {url.removesuffix('/v1')}/healthz", highlight=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@app.command("serve-model")
def serve_model(
    model: str = typer.Option("embedded", help="Local model: HF folder or 'embedded'."),
    provider: str = typer.Option("local", help="local (transformers, requests batched per replica) or vllm "
                                 "(a vLLM engine per replica, continuous batching)."),
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
        if provider not in ("local", "vllm"):
            raise typer.BadParameter(f"{provider!r} is not local or vllm", param_hint="--provider")
        spec = ModelSpec(provider=provider, model=model, batch_size=batch_size, device=device)
        ensure_ray()
        url = start_model_server(spec, host=host, port=port, num_replicas=replicas, num_gpus=gpus)
    except BpoRayError as exc:
        _fail(exc)
    console.print(f"[green]serving[/] {model} at {url}  (GET {url}/models, POST {url}/chat/completions, POST {url}/completions)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@app.command()
def pipeline(
    config: Path = typer.Option(..., "--config", "-c", help="Pipeline YAML: output (the run folder), then one "
                                "section per stage (construct, train, optimize, generate, evaluate, report), "
                                "each that verb's own config."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="The run folder (overrides the config's)."),
    ray_address: Optional[str] = RAY_ADDRESS,
    verbose: bool = VERBOSE,
) -> None:
    """construct -> train -> optimize -> generate -> evaluate -> report from one config; a re-run resumes."""
    from bpo_ray.config import load_config
    from bpo_ray.pipeline.config import PipelineConfig
    from bpo_ray.pipeline.run import run_pipeline

    _setup_logging(verbose)
    try:
        run_pipeline(load_config(PipelineConfig, config, {"output": output, "ray_address": ray_address}))
    except BpoRayError as exc:
        _fail(exc)


@app.command()
def demo(
    output: str = typer.Option("runs/demo", help="The run folder; delete it to start over."),
) -> None:
    """The whole pipeline on the embedded default (SmolLM2-135M on CPU, no API key): construct pairs from
    sample feedback, fine-tune the optimizer, rewrite sample prompts, answer, judge, report."""
    from bpo_ray.demo import run_demo

    _setup_logging(False)
    try:
        run_demo(output=output)
    except BpoRayError as exc:
        _fail(exc)


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
