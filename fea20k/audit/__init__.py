"""The audit of a round: what was rejected, why, by which stage, and whether the filter is biased.

* :mod:`fea20k.audit.data` reads a round's stage outputs into an :class:`AuditData` (:func:`collect`) and yields
  the rejected records a :class:`Filters` selects (:func:`iter_rejections`);
* :mod:`fea20k.audit.terminal` builds the rich tables and panels ``fea20k audit`` prints;
* :mod:`fea20k.audit.html` renders the self-contained page of ``--html`` from the jinja2 template
  ``cards/audit.html`` (autoescaped);
* :mod:`fea20k.audit.export` writes the CSV of ``--export``.

Only ``fea20k audit`` (``fea20k/cli/audit_cmds.py``) prints. The names below are the package's public interface.
"""

from __future__ import annotations

from fea20k.audit.data import (
    AuditData,
    Filters,
    RepairData,
    au_kind,
    aus_text,
    collect,
    data_url,
    gt_summary,
    iter_rejections,
    rationale_segments,
    stage_dirs,
    validate_details,
)
from fea20k.audit.export import CSV_COLUMNS, csv_row, export_csv
from fea20k.audit.html import page_context, render_html
from fea20k.audit.terminal import (
    KIND_STYLE,
    acceptance_table,
    legend,
    rationale_text,
    rejection_table,
    repair_tables,
    sample_panel,
)


_data_url = data_url  # the name fea20k.labelstudio imports

__all__ = [
    "CSV_COLUMNS",
    "KIND_STYLE",
    "AuditData",
    "Filters",
    "RepairData",
    "acceptance_table",
    "au_kind",
    "aus_text",
    "collect",
    "csv_row",
    "data_url",
    "export_csv",
    "gt_summary",
    "iter_rejections",
    "legend",
    "page_context",
    "rationale_segments",
    "rationale_text",
    "rejection_table",
    "render_html",
    "repair_tables",
    "sample_panel",
    "stage_dirs",
    "validate_details",
]
