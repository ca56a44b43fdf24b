"""Named reports in the campaign file: ``report: {NAME: {by, metric, stage, runs, formats, output}}``."""

from __future__ import annotations

import re
from typing import Any, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

REPORT_FORMATS = ("table", "json", "md", "csv", "latex", "html")
EXTENSIONS = {"json": "json", "md": "md", "csv": "csv", "latex": "tex", "html": "html", "table": "txt"}
NAME_RE = re.compile(r"^[A-Za-z_][\w-]*$")


class NamedReport(BaseModel):
    """What ``corral report NAME`` (or ``corral report`` alone, for all of them) produces."""

    model_config = ConfigDict(extra="forbid")

    by: List[str] = Field(default_factory=list)
    metric: Optional[str] = None
    stage: Optional[str] = None
    #: which runs: ``--where`` conditions over the registry (default: the newest run of the campaign)
    runs: List[str] = Field(default_factory=list)
    compare: Optional[bool] = None
    #: also list the ``top`` best and worst groups
    top: Optional[int] = Field(default=None, ge=1)
    formats: List[Literal["table", "json", "md", "csv", "latex", "html"]] = Field(default_factory=lambda: ["table"])
    #: where files go; ``{name}`` and ``{ext}`` are filled in (a table is printed unless output is set)
    output: str = "reports/{name}.{ext}"
    plot: Optional[str] = None
    #: a paired comparison of this dimension's values on the units they share
    paired_by: Optional[str] = None
    pair_on: List[str] = Field(default_factory=list)
    baseline: Optional[str] = None
    paired_test: Optional[Literal["t", "wilcoxon"]] = None
    #: this dimension's values as the columns
    columns: Optional[str] = None
    lower_is_better: List[str] = Field(default_factory=list)
    #: LaTeX: a table environment with this caption and label
    caption: Optional[str] = None
    label: Optional[str] = None

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("by", "runs", "formats", "pair_on", "lower_is_better", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: str) -> str:
        try:
            value.format(name="n", ext="e")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"output {value!r} may only use {{name}} and {{ext}}: {exc!r}") from None
        return value

    def path_for(self, name: str, fmt: str) -> str:
        return self.output.format(name=name, ext=EXTENSIONS[fmt])


def check_report_names(reports: dict[str, NamedReport]) -> dict[str, NamedReport]:
    for name in reports:
        if not NAME_RE.match(name):
            raise ValueError(f"report name {name!r} must be letters, digits, '_' or '-'")
    return reports
