"""The DMC retrofit recipe: ``config`` (every default), ``task`` (one stage's losses and batches),
``recipe`` (the three stages, calibration, evaluation and the report)."""

from dynacomp.dmc.retrofit.config import STAGES, RetrofitConfig
from dynacomp.dmc.retrofit.recipe import (
    DEMO_CONFIG,
    calibrate,
    calibrate_threshold,
    demo,
    evaluate,
    plot_cr_heatmap,
    report_summary,
    retrofit,
)
from dynacomp.dmc.retrofit.task import RetrofitTask, distillation_loss, ratio_loss

__all__ = ["DEMO_CONFIG", "STAGES", "RetrofitConfig", "RetrofitTask", "calibrate", "calibrate_threshold", "demo",
           "distillation_loss", "evaluate", "plot_cr_heatmap", "ratio_loss", "report_summary", "retrofit"]
