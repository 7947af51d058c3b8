"""Drive a pruning callback step by step, as the training loop does, with an optional resume."""
from typing import Any, Callable


def drive_callback(fresh: Callable[[], tuple], steps: int, loss: Callable[[Any, int], Any],
                   snapshot: Callable[[Any, Any], Any], resume_at: int | None = None) -> tuple[Any, list]:
    """``fresh()`` gives (model, callback, optimizer) after the callback's fit start. Each step minimises
    ``loss(model, step)``, calls the callback's ``after_step`` and records ``snapshot(model, optimizer)``.
    ``resume_at``: after that step, a fresh model / callback / optimizer load the others' state dicts
    (what the training loop does on resume: fit start, then the checkpoint). Returns (callback, snapshots)."""
    model, cb, opt = fresh()
    seen = []
    for i in range(steps):
        opt.zero_grad()
        loss(model, i).backward()
        opt.step()
        cb.after_step(model, opt)
        seen.append(snapshot(model, opt))
        if i == resume_at:
            states = model.state_dict(), opt.state_dict(), cb.state_dict()
            model, cb, opt = fresh()
            model.load_state_dict(states[0])
            opt.load_state_dict(states[1])
            cb.load_state_dict(states[2])
    cb.on_fit_end(model)
    return cb, seen
