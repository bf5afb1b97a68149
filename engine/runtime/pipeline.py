"""What a pipeline is: a list of steps, each calling `<server>.<tool>` with templated arguments.

The task's `payload` holds `{"pipeline": [...]}`; the executor runs it, the
task services check it before it is saved.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pao_orchestrator.contracts import MAX_PAYLOAD_CHARS, MAX_STEP_ARGUMENTS_CHARS
from pao_orchestrator.engine.runtime import storable

_IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class PipelineStep(BaseModel):
    """One step: call `<server>.<tool>` with `with` rendered against the run so far."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(pattern=_IDENT, description="Later steps read ${steps.<id>.<field>}.")
    uses: str = Field(
        pattern=r"^[A-Za-z0-9_-]+\.[^.\s][^\s]*$",
        description="'<server>.<tool>' (list_downstream_tools), or pao.noop / pao.sleep.",
    )
    with_: dict[str, Any] = Field(
        default_factory=dict,
        alias="with",
        description="Arguments; strings may hold ${...} templates (steps, <save_as>, trigger, event, task, run, "
        "now, secrets.NAME). A value that is exactly one ${...} keeps its type. At most 64 KiB.",
    )
    save_as: str | None = Field(default=None, pattern=_IDENT, description="Bind the output as ${<save_as>}, kept.")
    timeout_seconds: float | None = Field(default=None, gt=0, le=3600, description="Default 60.")

    @field_validator("with_", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if isinstance(value, dict) and storable.larger_than(value, MAX_STEP_ARGUMENTS_CHARS):
            raise ValueError(
                f"is larger than {MAX_STEP_ARGUMENTS_CHARS:,} characters of JSON (the limit of a step's 'with'); "
                "pass large data between steps with templates instead"
            )
        return value

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
    on_failure: list[PipelineStep] = Field(
        default_factory=list,
        max_length=20,
        description="Run once when a run fails for good; may read ${run.error}.",
    )

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if isinstance(value, dict) and storable.larger_than(value, MAX_PAYLOAD_CHARS):
            raise ValueError(f"is larger than {MAX_PAYLOAD_CHARS:,} characters of JSON (the limit of a task's payload)")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Payload:
        seen: set[str] = set()
        steps = [("pipeline", i, s) for i, s in enumerate(self.pipeline)]
        steps += [("on_failure", i, s) for i, s in enumerate(self.on_failure)]
        for part, index, step in steps:
            for name in (step.id, step.save_as):
                if name is None:
                    continue
                if name in seen and not (name == step.save_as == step.id):
                    raise ValueError(
                        f"{part}[{index}]: name {name!r} is used twice; step ids and save_as names must be unique"
                    )
                seen.add(name)
        return self
