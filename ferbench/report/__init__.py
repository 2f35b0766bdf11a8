"""Reports: run records -> reports/<spec>/index.html (self-contained) and report.md (+ figures/).

`page` builds a page's context from the records (tables, verdicts, conditions, figures);
`sections` lays it out as the sections both templates render; `render` renders and writes pages
and the reports index. Report code never imports the engine and never trains.
"""

from ferbench.report.page import build_context, conditions, device_label
from ferbench.report.render import markdown_text, render_reports, write_index

__all__ = ["build_context", "conditions", "device_label", "markdown_text", "render_reports", "write_index"]
