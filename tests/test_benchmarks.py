"""The GPU benchmark (`python benchmarks/gpu.py`), run on this CPU in its dry-run form so
that it cannot rot: cuDNN's call replaced by its reference, small sizes, one round. Every
kind of row is built, checked against recurjax's sequential strategy and written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# About 40 s of compiles: the slow tier, which CI runs. It needs torch, flax and equinox.
pytestmark = [pytest.mark.slow, pytest.mark.extras]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_gpu_benchmark_dry_run_writes_every_table(tmp_path):
    import gpu

    out = tmp_path / "RESULTS_gpu.md"
    assert gpu.main(["--quick", "--dry-run", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# GPU benchmark results: cpu\n")
    assert "**Dry run**" in text and "failed" not in text.lower()
    for title in (
        "## LSTM B=4 T=8 F=4 H=8",
        "## Stacked bidirectional LSTM, 2 layers, B=3 T=8 F=4 H=8, ragged lengths",
        "## Linear cells, B=2 T=16 in=H=8",
        "## Matrix memories, B=2 T=16 in=H=8",
    ):
        assert title in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    names = [r.split(" | ")[0][2:] for r in rows if not r.startswith("| row ")]
    assert names == [
        "recurjax strategy='auto'",
        "recurjax strategy='fused'",
        "recurjax strategy='sequential'",
        "recurjax strategy='cudnn'",
        "flax linen nn.RNN(LSTMCell)",
        "flax linen nn.RNN(OptimizedLSTMCell)",
        "equinox",
        "torch.nn.LSTM (cpu)",
        "recurjax strategy='auto'",
        "recurjax strategy='fused'",
        "recurjax strategy='sequential'",
        "recurjax strategy='cudnn'",
        "torch.nn.LSTM packed (cpu)",
        "MinGRUCell: sequential",
        "MinGRUCell: hoisted",
        "MinGRUCell: auto",
        "MLSTMCell (4 heads): sequential",
        "MLSTMCell (4 heads): chunkwise",
        "MLSTMCell (4 heads): auto",
    ]
    for row in rows[1:]:
        if not row.startswith("| row "):  # every row checked: a difference, not a blank
            assert float(row.rstrip(" |").rsplit(" | ", 1)[1]) < 1e-4, row
    # The dry run left the strategy registry as it found it.
    from recurjax._scan.strategies import REGISTRY, cudnn

    assert REGISTRY["cudnn"] is cudnn.CUDNN
