"""What `goprof agent` was asked to do: the settings the agent's parts share."""

from __future__ import annotations

from dataclasses import dataclass

from goprof.agent.discovery import ProcessFilter
from goprof.kinds.mem.session import DEFAULT_SPAN_RATE


@dataclass
class AgentOptions:
    filter: ProcessFilter
    hostname: str
    window_s: float = 10.0
    frequency: int = 99
    kernel: bool = False
    mem: bool = False
    mem_rate: int = DEFAULT_SPAN_RATE
    service_name: str | None = None
    node: str | None = None
    duration: float | None = None
    scan_interval_s: float = 1.0  # how often new processes are looked for
    max_targets: int = 4096
    goroutine_ids: bool = False  # the numeric label `goroutine` on CPU and allocation samples
    goroutines: bool = False  # a goroutine profile of every process every window

