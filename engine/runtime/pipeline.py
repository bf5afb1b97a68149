"""What a pipeline is: a list of steps, each calling `<server>.<tool>` with templated arguments.

The task's `payload` holds `{"pipeline": [...]}`; the executor runs it, the
task services check it before it is saved.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

_IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class PipelineStep(BaseModel):
    """One step: call `<server>.<tool>` with `with` rendered against the run so far."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(pattern=_IDENT, description="Unique within the pipeline; later steps read ${steps.<id>...}.")
    uses: str = Field(
        pattern=r"^[A-Za-z0-9_-]+\.[^.\s][^\s]*$",
        description="'<server>.<tool>': a server from mcp.json, or 'pao' for built-in steps.",
    )
    with_: dict[str, Any] = Field(default_factory=dict, alias="with", description="Tool arguments; templates.")
    save_as: str | None = Field(
        default=None,
        pattern=_IDENT,
        description="Also bind this step's output as ${<save_as>} for later steps and in the run's outputs.",
    )
    timeout_seconds: float | None = Field(default=None, gt=0, le=3600)

    @property
    def server(self) -> str:
        return self.uses.split(".", 1)[0]

    @property
    def tool(self) -> str:
        return self.uses.split(".", 1)[1]


class Payload(BaseModel):
    """A task's payload: the pipeline its runs execute."""

    model_config = ConfigDict(extra="allow")

    pipeline: list[PipelineStep] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _unique_names(self) -> Payload:
        seen: set[str] = set()
        for index, step in enumerate(self.pipeline):
            for name in (step.id, step.save_as):
                if name is None:
                    continue
                if name in seen and not (name == step.save_as == step.id):
                    raise ValueError(
                        f"pipeline[{index}]: name {name!r} is used twice; step ids and save_as names must be unique"
                    )
                seen.add(name)
        return self
