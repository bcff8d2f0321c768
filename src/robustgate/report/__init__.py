"""Plots and the run report."""

from robustgate.report.decision_regions import plot_decision_regions
from robustgate.report.tables import metrics_table

__all__ = ["metrics_table", "plot_decision_regions"]
