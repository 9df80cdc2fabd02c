"""Speed and cost: the cost model (parameters, MACs, activation memory per layer), latency / FPS under a
recorded protocol, and trade-off tables and plots. ``seglab benchmark`` on the command line."""

from seglab.bench.cost import LayerCost, ModelCost, count_cost, flop_counter_macs, format_cost
from seglab.bench.latency import PATHS, benchmark_models, fold_batchnorm
from seglab.bench.report import pareto_front, write_outputs
from seglab.bench.run import cost_report, run_benchmark

__all__ = [
    "PATHS",
    "LayerCost",
    "ModelCost",
    "benchmark_models",
    "cost_report",
    "count_cost",
    "flop_counter_macs",
    "fold_batchnorm",
    "format_cost",
    "pareto_front",
    "run_benchmark",
    "write_outputs",
]
