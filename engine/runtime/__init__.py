"""Runtime: the scheduler that turns due tasks into runs, the workers that claim and execute them,
the pipeline executor, group-committed completions, and the rules for creating a run.

The door of the runtime room: other rooms import only the names below.
"""

from __future__ import annotations

from pao_orchestrator.engine.runtime.arguments import validate_arguments
from pao_orchestrator.engine.runtime.builtins import BUILTINS, Builtin
from pao_orchestrator.engine.runtime.conditions import Prober
from pao_orchestrator.engine.runtime.enqueuing import RunSource, enqueue, key_context, serial_key, trigger_view
from pao_orchestrator.engine.runtime.events import (
    EventLimits,
    Matcher,
    NewEvent,
    Published,
    check_event,
    check_topic,
    event_view,
    publish,
)
from pao_orchestrator.engine.runtime.executor import Executor, RunHandle, ToolCaller, lease_clock
from pao_orchestrator.engine.runtime.fires import between as fires_between
from pao_orchestrator.engine.runtime.fires import span as fires_span
from pao_orchestrator.engine.runtime.pipeline import Payload, PipelineStep
from pao_orchestrator.engine.runtime.relay import Ingest, Relay
from pao_orchestrator.engine.runtime.renderer import Renderer
from pao_orchestrator.engine.runtime.retention import Pruner, PruneResult, RetentionPolicy
from pao_orchestrator.engine.runtime.scheduler import PassResult, Scheduler
from pao_orchestrator.engine.runtime.worker import Worker, worker_name

__all__ = [
    "BUILTINS",
    "Builtin",
    "EventLimits",
    "Executor",
    "Ingest",
    "Matcher",
    "NewEvent",
    "PassResult",
    "Payload",
    "PipelineStep",
    "Prober",
    "PruneResult",
    "Pruner",
    "Published",
    "Relay",
    "Renderer",
    "RetentionPolicy",
    "RunHandle",
    "RunSource",
    "Scheduler",
    "ToolCaller",
    "Worker",
    "check_event",
    "check_topic",
    "enqueue",
    "event_view",
    "fires_between",
    "fires_span",
    "key_context",
    "lease_clock",
    "publish",
    "serial_key",
    "trigger_view",
    "validate_arguments",
    "worker_name",
]
