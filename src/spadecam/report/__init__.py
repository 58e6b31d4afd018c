"""Reports of an evaluation: :func:`write_report` (one self-contained HTML file, no torch,
:mod:`.html`); :func:`write_detector_report` and :func:`detector_panels` (the galleries'
pictures from a torch detector, :mod:`.panels`; imported on first use)."""

from __future__ import annotations

from typing import Any

from spadecam.report.html import ReportImage, render_report, write_report

__all__ = ["ReportImage", "detector_panels", "render_report", "write_detector_report",
           "write_report"]


def __getattr__(name: str) -> Any:
    if name in ("detector_panels", "write_detector_report"):
        from spadecam.report import panels

        return getattr(panels, name)
    raise AttributeError(f"module 'spadecam.report' has no attribute {name!r}")
