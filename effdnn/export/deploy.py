"""``effdnn.deploy``: run a model on the fastest CPU engine that computes it, chosen by measurement.

Candidates (each built only when it applies, else one line saying why):

- ``torch``: the model itself, eager, in inference mode (for a quantized model: its fake-quantized
  forward, the reference every other engine is compared with);
- ``torch-inference``: ``optimize_for_inference(model)`` (the same outputs, strided max-pools), when it
  rewrites something;
- ``onnxruntime``: ``export_onnx(model)`` in onnxruntime's CPU provider: the fp32 graph of a float
  model, the QDQ graph of a quantized one, which onnxruntime fuses into QLinearConv / QGemm (on a CPU
  without VNNI, ``int8_fusion_saturates``, exported with 7-bit weights in the layers whose 8-bit pairs
  would overflow, as the int8 engine does);
- ``int8``: effdnn's int8 engine (``quant.deploy_int8.to_int8``: torch's x86 quantized kernels with
  effdnn's own scales and codes), for a quantized model. On a CPU without VNNI it computes the model
  with 7-bit weights in the layers whose 8-bit u8 x s8 pairs would overflow int16 (``reduce_range``):
  the description says so, and with ``data`` the summary gives that fake-quantized model's accuracy and
  the engine's agreement with it (``exact``) beside its agreement with the model given.

``engine="auto"`` times every candidate on the example batch (interleaved rounds, median) and picks the
fastest; with ``data`` it also measures each one's top-1 accuracy (when the batches carry labels) and
its top-1 agreement with the ``torch`` reference, and passes over an engine that agrees on fewer than
``min_agreement`` of the examples (a broken engine: both int8 engines compute their model exactly, up to float
rounding, so the default 0.95 only lets through the predictions that the 7-bit weights of a CPU
without VNNI change). ``engine="NAME"`` builds that engine only, and fails in one line
when it cannot run the model. The returned :class:`Deployment` runs the model and says what it picked
and why.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import EffdnnError
from ..utils.batches import batch_input, forward, move
from .inference import StridedMaxPool2d, optimize_for_inference
from .onnx import export_onnx, onnx_session, run_onnx
from .qdq import int8_fusion_saturates

ENGINES = ("torch", "torch-inference", "onnxruntime", "int8")
Runner = Callable[[Any], torch.Tensor]
Built = tuple[Runner, str, Runner | None]  # runner, description, the model it computes when not the one given


def _first_tensor(out: Any) -> torch.Tensor:
    """The model's first output as a tensor (a tensor, the first of a tuple, the first value of a dict)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "values"):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    if hasattr(out, "__array__"):
        return torch.from_numpy(out)
    raise EffdnnError(f"deploy: the model's output is a {type(out).__name__}, not a tensor")


def _torch_runner(model: nn.Module) -> Runner:
    def run(x: Any) -> torch.Tensor:
        with torch.inference_mode():
            return _first_tensor(forward(model, x))

    return run


def _quantized(model: nn.Module) -> bool:
    from ..quant.modules import QuantAdd, QuantLayerMixin

    return any(isinstance(m, (QuantLayerMixin, QuantAdd)) for m in model.modules())


def _build(name: str, model: nn.Module, example: Any, workdir: Path, threads: int) -> Built:
    """(runner, description, reference) of engine ``name``; ``reference`` runs the model the engine
    computes where that is not ``model`` (else None); raises EffdnnError with the one-line reason it cannot."""
    if name == "torch":
        return _torch_runner(model), "PyTorch eager" + (" (fake-quantized)" if _quantized(model) else " fp32"), None
    if name == "torch-inference":
        opt = optimize_for_inference(model)
        if not any(isinstance(m, StridedMaxPool2d) for m in opt.modules()):
            raise EffdnnError("torch-inference: nothing to rewrite (no max-pool with stride = kernel)")
        return _torch_runner(opt.eval()), "PyTorch eager, inference form (strided max-pools)", None
    if name == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise EffdnnError("onnxruntime: not installed (pip install onnxruntime)") from None
        what, runs = ("QDQ int8 graph", model) if _quantized(model) else ("fp32 graph", model)
        if _quantized(model) and int8_fusion_saturates():  # fused u8 x s8 kernels add pairs in int16 here
            from ..quant.int8_pairs import fit_int16_pairs

            runs, reduced = fit_int16_pairs(model, "weight")
            if reduced:
                what += (f", 7-bit weights in {len(reduced)} layers (no VNNI: 8-bit u8 x s8 pairs overflow int16 in "
                         "QLinearConv / QGemm)")
        path = export_onnx(runs, example, workdir / "model.onnx")
        sess = onnx_session(path, threads)
        return ((lambda x: torch.from_numpy(run_onnx(sess, x))), f"onnxruntime CPU, {what} ({path})",
                _torch_runner(runs) if runs is not model else None)
    if name == "int8":
        if not _quantized(model):
            raise EffdnnError("int8: the model has no quantized layers (quantize it first: effdnn.quantize)")
        from ..quant.deploy_int8 import int8_plan, to_int8

        try:
            int8 = to_int8(model)
        except EffdnnError as e:
            raise EffdnnError(f"int8: {e}") from None
        except Exception as e:  # a model torch.fx cannot trace, an op the int8 kernels lack
            raise EffdnnError(f"int8: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        plan = int8_plan(int8)
        ref = _torch_runner(plan.reference) if plan.reference is not model else None
        what = f"effdnn int8 engine (torch x86 quantized kernels, effdnn's scales and codes): {plan.summary()}"
        return _torch_runner(int8), what, ref
    raise EffdnnError(f"deploy: unknown engine {name!r} (known: auto, {', '.join(ENGINES)})")


def _latencies(runners: dict[str, Runner], x: Any, rounds: int) -> dict[str, float]:
    """Median ms per call of each runner on ``x``, rounds interleaved so machine load hits all alike."""
    per: dict[str, int] = {}
    for k, fn in runners.items():
        fn(x)  # warm-up (first-call allocations, onnxruntime's prepacking)
        t = time.perf_counter()
        fn(x)
        per[k] = max(1, min(50, int(0.02 / max(time.perf_counter() - t, 1e-6))))  # ~20 ms per round each
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, fn in runners.items():
            for _ in range(per[k]):
                t = time.perf_counter()
                fn(x)
                times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _quality(runners: dict[str, Runner], data: Iterable[Any], max_batches: int | None,
             references: dict[str, Runner]) -> tuple[dict[str, float], dict[str, float], dict[str, tuple[float, float]]]:
    """({engine: top-1 accuracy} when the batches carry labels, {engine: top-1 agreement with torch},
    {engine: (accuracy of the model it computes (nan without labels), agreement with it)} for the
    engines of ``references``)."""
    hits = {k: 0 for k in runners}
    agree = {k: 0 for k in runners}
    ref_hits = {k: 0 for k in references}
    exact = {k: 0 for k in references}
    seen, labelled = 0, True
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        x = move(batch_input(batch), "cpu")
        y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        labelled = labelled and isinstance(y, torch.Tensor)
        ref = runners["torch"](x).argmax(-1)
        for k, fn in runners.items():
            pred = ref if k == "torch" else fn(x).argmax(-1)
            agree[k] += int((pred == ref).sum())
            if isinstance(y, torch.Tensor):
                hits[k] += int((pred == y.reshape(pred.shape)).sum())
            if k in references:
                own = references[k](x).argmax(-1)
                exact[k] += int((pred == own).sum())
                if isinstance(y, torch.Tensor):
                    ref_hits[k] += int((own == y.reshape(own.shape)).sum())
        seen += ref.numel()
    if seen == 0:
        raise EffdnnError("deploy: data holds no batches")
    acc = {k: v / seen for k, v in hits.items()} if labelled else {}
    own_quality = {k: (ref_hits[k] / seen if labelled else float("nan"), exact[k] / seen) for k in references}
    return acc, {k: v / seen for k, v in agree.items()}, own_quality


class Deployment:
    """A model running on the engine ``deploy`` picked: call it like the model (first output, a tensor).

    ``engine``: the engine's name; ``description`` (``descriptions`` of all); ``latency_ms`` / ``accuracy`` / ``agreement``: the
    figures of every candidate measured; ``skipped``: {engine: the one line why it was not a candidate};
    ``reason``: why this engine; ``onnx_path`` when an ONNX file was written; ``computed``: {engine:
    (accuracy of the fake-quantized model it computes, agreement with it)} for an engine that computes
    another model than the one given (the int8 engine with 7-bit weights on a CPU without VNNI).
    ``str()`` is the table."""

    def __init__(self, engine: str, runner: Runner, descriptions: dict[str, str], reason: str, latency_ms: dict[str, float],
                 skipped: dict[str, str], accuracy: dict[str, float], agreement: dict[str, float],
                 onnx_path: Path | None, batch: int, computed: dict[str, tuple[float, float]] | None = None) -> None:
        self.engine, self.runner, self.descriptions, self.reason = engine, runner, descriptions, reason
        self.description = descriptions[engine]
        self.latency_ms, self.skipped, self.accuracy, self.agreement = latency_ms, skipped, accuracy, agreement
        self.onnx_path, self.batch, self.computed = onnx_path, batch, computed or {}

    def __call__(self, x: Any) -> torch.Tensor:
        return self.runner(x)

    def summary(self) -> str:
        lines = [f"deploy: {self.engine} ({self.description}): {self.reason}"]
        if self.latency_ms:
            lines.append(f"| engine | what | latency ms (batch {self.batch}) | accuracy | agreement with torch |")
            lines.append("|---|---|---|---|---|")
            for k, ms in sorted(self.latency_ms.items(), key=lambda kv: kv[1]):
                acc = f"{self.accuracy[k]:.4f}" if k in self.accuracy else "-"
                agr = f"{self.agreement[k]:.4f}" if k in self.agreement else "-"
                lines.append(f"| {k}{' (picked)' if k == self.engine else ''} | {self.descriptions[k]} | {ms:.3f} | {acc} "
                             f"| {agr} |")
        for k, (acc, exact) in self.computed.items():
            lines.append(f"{k} computes another fake-quantized model than the one given: its accuracy "
                         f"{acc:.4f}, the engine's agreement with it {exact:.4f}")
        lines += [f"skipped {k}: {why}" for k, why in self.skipped.items()]
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self) -> str:
        return f"Deployment(engine={self.engine!r}, latency_ms={self.latency_ms.get(self.engine)})"


def _candidates(model: nn.Module, example: Any, names: tuple[str, ...], workdir: Path, threads: int
                ) -> tuple[dict[str, Built], dict[str, str]]:
    built, skipped = {}, {}
    for name in names:
        try:
            built[name] = _build(name, model, example, workdir, threads)
        except EffdnnError as e:
            skipped[name] = str(e).removeprefix(f"{name}: ")
    return built, skipped


def _pick(latency: dict[str, float], agreement: dict[str, float], min_agreement: float,
          skipped: dict[str, str]) -> tuple[str, str]:
    ok = {k: v for k, v in latency.items() if agreement.get(k, 1.0) >= min_agreement}
    for k in latency.keys() - ok.keys():
        skipped[k] = f"agrees with torch on {agreement[k]:.2%} of the data, below min_agreement {min_agreement:.2%}"
    best = min(ok, key=ok.__getitem__)
    others = ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(ok.items(), key=lambda kv: kv[1]) if k != best)
    reason = f"fastest measured, {latency[best]:.3f} ms per batch" + (f" (then {others})" if others else "")
    return best, reason


def _check_args(model: Any, engine: str, threads: int | None, rounds: int, min_agreement: float) -> None:
    if not isinstance(model, nn.Module):
        raise EffdnnError(f"deploy: model must be a torch.nn.Module, got {type(model).__name__}")
    if engine != "auto" and engine not in ENGINES:
        raise EffdnnError(f"deploy: unknown engine {engine!r} (known: auto, {', '.join(ENGINES)})")
    from ..quant.qat_quantizers import QATQuantizer

    if any(isinstance(m, QATQuantizer) for m in model.modules()):
        raise EffdnnError("deploy: the model still has training-time (QAT) quantizers; convert it first: "
                          "effdnn.convert_qat(model)")
    if not 0 <= min_agreement <= 1:
        raise EffdnnError(f"deploy: min_agreement must be in [0, 1], got {min_agreement}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise EffdnnError(f"deploy: rounds must be an integer >= 1, got {rounds!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise EffdnnError(f"deploy: threads must be an integer >= 1, got {threads!r}")


def deploy(model: nn.Module, example: Any, engine: str = "auto", data: Iterable[Any] | None = None,
           threads: int | None = None, rounds: int = 5, min_agreement: float = 0.95, max_batches: int | None = None,
           workdir: str | Path | None = None) -> Deployment:
    """Build the engines that can run ``model`` (see the module doc), time them on ``example`` (a batch
    input: a tensor or a dict of keyword tensors) and return a :class:`Deployment` on the fastest
    (``engine="auto"``) or on the one named. ``data``: batches for accuracy / agreement (``max_batches``
    of them); ``threads``: intra-op threads of every engine (default torch's); ``workdir``: where the
    ONNX file goes (default a temporary folder). A quantized model must be PTQ'd or converted QAT.
    The model is put in eval mode."""
    _check_args(model, engine, threads, rounds, min_agreement)
    model = model.eval()
    try:
        batch = _first_tensor(_torch_runner(model)(example)).shape[0]
    except EffdnnError:
        raise
    except Exception as e:
        raise EffdnnError(f"deploy: the model's forward fails on example: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None
    threads = threads or torch.get_num_threads()
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="effdnn-deploy-"))
    names = ENGINES if engine == "auto" else (("torch", engine) if data is not None and engine != "torch" else (engine,))
    built, skipped = _candidates(model, example, names, workdir, threads)
    if engine != "auto" and engine not in built:
        raise EffdnnError(f"deploy: engine {engine}: {skipped[engine]}")
    runners = {k: r for k, (r, _, _) in built.items()}
    references = {k: ref for k, (_, _, ref) in built.items() if ref is not None}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # every engine measured with the same threads
    try:
        acc, agr, computed = _quality(runners, data, max_batches, references) if data is not None else ({}, {}, {})
        latency = _latencies(runners, example, rounds)
    finally:
        torch.set_num_threads(old_threads)
    if engine == "auto":
        best, reason = _pick(latency, agr, min_agreement, skipped)
        if skipped:
            reason += "; skipped: " + ", ".join(skipped)
    else:
        best, reason = engine, f"named by the caller, {latency[engine]:.3f} ms per batch"
    onnx_path = workdir / "model.onnx" if "onnxruntime" in built else None
    descriptions = {k: v[1] for k, v in built.items()}
    return Deployment(best, runners[best], descriptions, reason, latency, skipped, acc, agr, onnx_path, batch, computed)


__all__ = ["ENGINES", "Deployment", "deploy"]
