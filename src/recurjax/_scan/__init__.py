"""The scan engine: the one place in recurjax that knows about time.

api        scan, sequence_parallel_scan: the public functions and their docstrings
options    one frozen, checked object with every option of a scan
inputs     time-major inputs, lengths and resets as step masks, the settled state:
           shared by both public functions
run        the pipeline: reverse within lengths -> remat blocks -> composite or
           strategy -> padding mask
blocks     step masks, reversal within lengths, blocks for truncation and remat
policy     strategy="auto", each threshold citing the benchmark that set it
parallel   a linear cell's time axis split over devices
strategies sequential, fused (+ kernels), associative, chunked: a registry
"""

from .api import scan, sequence_parallel_scan

__all__ = ["scan", "sequence_parallel_scan"]
