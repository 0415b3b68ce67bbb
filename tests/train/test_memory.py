"""Worker memory: glibc's retention of freed tensors, and the setting that ends it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bpo_ray.train.config import TrainConfig

PROBE = r"""
import json, sys, torch
from bpo_ray.train.memory import release_freed_memory

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))

pinned = release_freed_memory() if sys.argv[1] == "release" else None
big = torch.ones(8 * 2**20 // 4); del big   # a freed large block: glibc raises its threshold past it
blocks = [torch.ones(2**20 // 4) for _ in range(300)]   # 300 x 1 MiB, touched
tail = torch.ones(16)   # a live block above them: the heap cannot shrink from its top
held = rss_mb()
del blocks
print(json.dumps({"pinned": pinned, "held": held, "after_free": rss_mb()}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc behaviour")
def test_freed_tensors_go_back_to_the_os_only_with_the_threshold_pinned():
    default, released = probe("default"), probe("release")
    assert default["after_free"] > default["held"] - 50  # glibc keeps the 300 MiB it was given back
    assert released["pinned"] is True
    assert released["after_free"] < released["held"] - 250


@pytest.mark.parametrize("stage, on_gpu, setting, expected", [
    (3, False, "auto", True), (2, False, "auto", False), (0, False, "auto", False), (3, True, "auto", False),
    (0, False, True, True), (3, False, False, False),
])
def test_auto_releases_for_zero_3_on_cpu(tmp_path, stage, on_gpu, setting, expected):
    cfg = TrainConfig(input=["x"], output=str(tmp_path), release_freed_memory=setting,
                      deepspeed={"zero_stage": stage})
    assert cfg.releases_freed_memory(on_gpu=on_gpu) is expected
