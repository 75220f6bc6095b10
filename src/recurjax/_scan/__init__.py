"""The scan engine: the one place in recurjax that knows about time.

api        scan, sequence_parallel_scan: the public functions and their docstrings
options    one frozen, checked object with every option of a scan
inputs     time-major inputs, lengths and resets as step masks, the settled state:
           shared by both public functions
run        the pipeline: reverse within lengths -> remat blocks -> composite or
           strategy -> padding mask; which strategy runs each cell (`choose`)
blocks     step masks, reversal within lengths, blocks for truncation and remat
history    the state after every step (`return_states`): the cell wrapped to output it
policy     the rules of strategy="auto", each naming the benchmark rows that set it
parallel   a linear cell's time axis split over devices
strategies sequential, fused (+ kernels), and associative, chunked, hoisted (one runner
           for linear cells): one `Strategy` object each, in a registry
"""

from .api import ScanOptions, scan, sequence_parallel_scan

__all__ = ["ScanOptions", "scan", "sequence_parallel_scan"]
