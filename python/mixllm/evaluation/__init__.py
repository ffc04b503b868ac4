"""``mixllm eval``: the MixLLM paper's experiments on RouterBench, with baselines.

A discrete-event stream simulator (:mod:`.simulator`), the routers compared (:mod:`.baselines`),
the metrics (:mod:`.metrics`: % of GPT-4, frontier, AIQ), the offline quality-cost frontier of a
representation (:mod:`.frontier`), bootstrap intervals (:mod:`.bootstrap`), the embedded
vectors' cache (:mod:`.vectors`), the experiments (:mod:`.experiments`) and the report writer
(:mod:`.report`). ``docs/evaluation.md`` describes the method and results.
"""

from mixllm.evaluation.experiments import EXPERIMENTS, EvalSettings, run_evaluation
from mixllm.evaluation.metrics import Point, aiq, hull
from mixllm.evaluation.report import format_table, write_report
from mixllm.evaluation.simulator import ServerProfile, Stream, StreamConfig, simulate

__all__ = [
    "EXPERIMENTS",
    "EvalSettings",
    "Point",
    "ServerProfile",
    "Stream",
    "StreamConfig",
    "aiq",
    "format_table",
    "hull",
    "run_evaluation",
    "simulate",
    "write_report",
]
