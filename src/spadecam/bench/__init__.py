"""The benchmark harness: the paper's reproductions and the field's protocols, kept apart
from the method (nothing in the rest of spadecam imports this package except the command
line's ``reproduce``).

- :mod:`~spadecam.bench.configs`: each recipe's benchmark settings (:class:`BenchmarkConfig`)
- :mod:`~spadecam.bench.protocols`: the data of each benchmark (Noisy-MNIST test and
  validation splits, ELPV, the DRA/AHL protocol on ELPV)
- :mod:`~spadecam.bench.runner`: the one runner (seeds, methods, ablations, precision, DDP)
- :mod:`~spadecam.bench.reproduce`: Noisy-MNIST Table I on the runner, written out;
  :mod:`~spadecam.bench.elpv`: ELPV (our protocols and the field's DRA/AHL protocol)
- :mod:`~spadecam.bench.pretrained`: the "pretrained" recipe's benchmark (no VAE)
- :mod:`~spadecam.bench.tables`, :mod:`~spadecam.bench.figures`: result tables and plots
- :mod:`~spadecam.bench.synthetic`: CutPaste-style synthetic anomalies (an ELPV ablation)
"""
