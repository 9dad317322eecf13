"""What the goroutine text formats share: which frames the runtime's traceback shows,
and the goroutines of a profile (only `goprof goroutines` profiles carry them)."""

from __future__ import annotations

from goprof.model import Frame, Profile


def goroutines_of(profile: Profile) -> list:
    """The goroutines a GoroutineProfile carries; ValueError for any other profile."""
    found = getattr(profile, "goroutines", None)
    if found is None:
        raise ValueError("this format is for `goprof goroutines` only")
    return found


def shown(frame: Frame) -> bool:
    """runtime.showfuncinfo at the default GOTRACEBACK: a frame of a function in package
    runtime is hidden unless exported (runtime.Gosched is shown, runtime.gopark not)."""
    name = frame.function
    if "." not in name:
        return False
    return not name.startswith("runtime.") or name[8:9].isupper()


def hidden_runtime(name: str) -> bool:
    """runtime/pprof's debug=1 output hides the runtime frames at the top of a stack
    (printStackRecord: runtime. and internal/runtime/ until the first other frame)."""
    return name.startswith("runtime.") or name.startswith("internal/runtime/")
