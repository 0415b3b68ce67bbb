"""Entry point for `ray job submit -- python jobs/report.py --input ... --output ...`.

Same flags and code as `bpo-ray report`; under `ray job submit` RAY_ADDRESS points the job
at the cluster it was submitted to.
"""

import sys
from pathlib import Path

# With --working-dir the package travels as source next to this folder; make it importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bpo_ray.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["report", *sys.argv[1:]], prog_name="jobs/report.py")
