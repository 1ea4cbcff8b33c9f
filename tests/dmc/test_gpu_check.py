"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check on CPU at tiny sizes, so that a lent
GPU's minutes are not spent finding a broken script."""

import os
import subprocess
import sys
from pathlib import Path

from tests.dmc.tiny import save_tiny_model

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_on_cpu_up_to_the_device_and_writes_its_page(tmp_path):
    model, text = save_tiny_model(tmp_path)
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path / "out"), "GPU_CHECK_MODEL": str(model),
           "GPU_CHECK_DATA": str(text), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "DYNACOMP_PROGRESS": "0"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    page = (tmp_path / "out" / "gpu_check.md").read_text()
    assert page.startswith("# GPU check\n\nCommand: `benchmarks/gpu_check.sh --dry-run`")
    assert "\nMachine: " in page and "\nDate: " in page
    # the dense loop and DMC x2 / x4 / x8 in bfloat16, and the retrofit's report
    assert "in bfloat16 on cpu" in page and page.count("\n| dmc |") == 3
    assert "dmc_perplexity: " in page and "--device cpu" in page and "--out RUN`" in page
    assert (tmp_path / "out" / "gpu_check_throughput.json").exists()
