"""What the terminal shows, and where everything else goes.

The terminal: bpo-ray's own lines, one progress line per job, and every library's warnings.
The libraries' INFO lines (Ray, Ray Data, HTTP clients) go to a log file in the job's output
folder, DIR/logs/<verb>.log, where a person debugging a run finds them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

OWN_LOGGERS = ("bpo_ray",)
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Ray Data logs through its own logger, which does not propagate to the root logger.
RAY_DATA_LOGGER = "ray.data"
RAY_SERVE_LOGGER = "ray.serve"

console = Console(stderr=True)


class _OwnInfoOrAnyWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(OWN_LOGGERS)


def setup_console_logging(verbose: bool = False) -> None:
    """The terminal: bpo-ray's INFO lines and everyone's warnings (everything with -v)."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False)
    if not verbose:
        handler.addFilter(_OwnInfoOrAnyWarning())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[handler], force=True)
    quiet_ray_consoles()


def quiet_ray_consoles() -> None:
    """Ray Data and Ray Serve print INFO lines (execution plans, deployments) on their own
    console handlers in the driver; keep their warnings there and leave the rest to their log
    files."""
    import ray.data  # noqa: F401  (configures the ray.data logger)

    for name in (RAY_DATA_LOGGER, RAY_SERVE_LOGGER):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)


@contextlib.contextmanager
def job_log_file(output: str, verb: str) -> Iterator[str | None]:
    """Copy every INFO line (ours, Ray Data's, the HTTP client's) to DIR/logs/<verb>.log while
    the job runs. Output folders on remote storage get no log file (the cluster's own logs
    hold the same lines)."""
    if "://" in output:
        yield None
        return
    folder = Path(output) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{verb}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    loggers = [logging.getLogger(), logging.getLogger(RAY_DATA_LOGGER)]
    for logger in loggers:
        logger.addHandler(handler)
    root_level = logging.getLogger().level
    if root_level > logging.INFO or root_level == logging.NOTSET:
        logging.getLogger().setLevel(logging.INFO)
    handler.stream.write(f"---- {verb} started {time.strftime('%Y-%m-%d %H:%M:%S')} ----\n")
    try:
        yield str(path)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        logging.getLogger().setLevel(root_level)
        handler.close()


class RowProgress:
    """One line per job: rows done of the rows to do, rejected, requests/s, elapsed and ETA.
    A live bar on a terminal; in a log or CI, where a bar would be noise, one line at the end
    and one every `quiet_every_s` seconds."""

    def __init__(self, verb: str, total: int, *, quiet_every_s: float = 30.0):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.verb, self.total = verb, total
        self.done = self.rejected = self.requests = 0
        self._printed = -1
        self.started = self._last_line = time.monotonic()
        self.quiet_every_s = quiet_every_s
        self._live = console.is_terminal
        self._bar = Progress(TextColumn(f"[bold]{verb}[/]"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("rows · {task.fields[detail]}"), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(), console=console,
                             disable=not self._live)
        self._task = self._bar.add_task(verb, total=total, detail="")

    def __enter__(self) -> "RowProgress":
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()
        if not self._live and self._printed != self.done:
            self._print_line()

    def advance(self, rows: int, rejected: int, requests: int) -> None:
        self.done += rows
        self.rejected += rejected
        self.requests += requests
        self._bar.update(self._task, completed=self.done, detail=self._detail())
        if not self._live and time.monotonic() - self._last_line >= self.quiet_every_s:
            self._print_line()

    def _detail(self) -> str:
        rate = self.requests / max(time.monotonic() - self.started, 1e-9)
        return f"{self.rejected} rejected · {rate:.1f} req/s"

    def _print_line(self) -> None:
        self._last_line, self._printed = time.monotonic(), self.done
        console.print(f"{self.verb}: {self.done}/{self.total} rows · {self._detail()} · "
                      f"{time.monotonic() - self.started:.0f} s", highlight=False)
