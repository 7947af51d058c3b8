"""Which recipe blocks compose, in one declared table: every pair either runs end to end or is refused
with one line (``EffdnnError``) before any training, never silently dropped.

Blocks apply in the order prune -> activation_sparsity -> quantize -> precision -> (finetune) ->
compress. How the pairs that compose work:

- prune x quantize: a pruned layer is quantized as its dense type into the masked quantized class
  (``sparse_class(QuantConv2d)``); the quantized weight is multiplied by the mask (binary / ternary /
  DoReFa, whose grids have no zero or map 0 to +-alpha, stay zero where pruned); storage is the sparse
  encoding of the weight codes.
- precision after quantize / prune / FATReLU / channel pruning: the precision block trains the given
  model (a fresh one would drop that work): QAT or binary training, or masked fine-tuning, in fp16 /
  bf16 under torch.autocast + GradScaler (lowp/precision_block.py).
- compress after quantize: quantized weights are baked (quantized, masked) and re-encoded by Deep
  Compression; a layer with <= 2^bits distinct levels keeps exactly those levels as its codebook.

``check_composition(blocks)`` takes an experiment's blocks as a dict block name -> parsed config (or the
plain recipe dict; ``finetune``: its TrainSpec / dict) and raises on the first refused pair.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import EffdnnError

QAT_METHODS = ("qat", "lsq", "pact", "dorefa")
BINARY_METHODS = ("bc", "bnn", "bwn", "xnor", "twn", "ttq")
UNSTRUCTURED = ("magnitude", "lamp", "taylor", "obd")


@dataclass(frozen=True)
class Rule:
    """``a`` / ``b``: (block, method pattern) of the two blocks; ``refusal``: None when they compose;
    ``when``: an extra condition on the two configs (default: always)."""

    a: tuple[str, str]
    b: tuple[str, str]
    refusal: str | None
    when: Callable[[Any, Any], bool] | None = None
    note: str = ""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


_FP8 = "precision fp8 / hfp8 replaces the GEMM layers with emulated FP8 layers"

RULES: tuple[Rule, ...] = (
    # -- quantize x precision ----------------------------------------------------------------------
    Rule(("quantize", "ptq"), ("precision", "*"),
         "quantize ptq + precision: PTQ calibrates a trained model and does not train, so there is nothing to run "
         "in reduced precision; use a QAT method (qat, lsq, pact, dorefa) for QAT in fp16 / bf16"),
    Rule(("quantize", "*"), ("precision", "fp8"), f"quantize + {_FP8}, which would drop the quantized layers; use fp16 or bf16"),
    Rule(("quantize", "*"), ("precision", "hfp8"), f"quantize + {_FP8}, which would drop the quantized layers; use fp16 or bf16"),
    Rule(("quantize", "*"), ("precision", "*"),
         "quantize + precision backend emulate: the emulated GEMM layers would replace the quantized layers; use "
         "backend auto or native", when=lambda q, p: _get(p, "backend") == "emulate"),
    Rule(("quantize", "*"), ("precision", "*"), None, note="QAT / binary training in fp16 / bf16 (autocast) on the "
         "quantized model; fp32: plain QAT"),
    # -- prune x precision -------------------------------------------------------------------------
    Rule(("prune", "channel"), ("precision", "*"), None, note="the channel-pruned model is trained, not a fresh one"),
    Rule(("prune", "*"), ("precision", "fp8"), f"prune + {_FP8}, which would drop the pruning masks; use fp16 or bf16",
         when=lambda pr, p: _get(pr, "schedule", "oneshot") in ("oneshot", "rigl")),
    Rule(("prune", "*"), ("precision", "hfp8"), f"prune + {_FP8}, which would drop the pruning masks; use fp16 or bf16",
         when=lambda pr, p: _get(pr, "schedule", "oneshot") in ("oneshot", "rigl")),
    Rule(("prune", "*"), ("precision", "*"),
         "prune + precision backend emulate: the emulated GEMM layers would replace the masked layers; use backend "
         "auto or native", when=lambda pr, p: _get(p, "backend") == "emulate"
         and _get(pr, "schedule", "oneshot") in ("oneshot", "rigl")),
    Rule(("prune", "*"), ("precision", "*"), None, note="masked fine-tuning in mixed precision (gradual schedules: "
         "pruning while the fresh model trains)"),
    # -- prune x gptq --------------------------------------------------------------------------------
    Rule(("prune", "*"), ("quantize", "gptq"),
         "prune + quantize gptq: GPTQ's error updates would move the pruned (zero) weights; quantize a pruned "
         "model with ptq (or prune with wanda after GPTQ's float model)"),
    Rule(("prune", "*"), ("quantize", "smoothquant"),
         "prune + quantize smoothquant: smoothing is not implemented for pruned (masked) layers; quantize a pruned "
         "model with ptq and dynamic per-token activations"),
    # -- binary deployment --------------------------------------------------------------------------
    Rule(("prune", "*"), ("quantize", "*"),
         "prune + a bit-packed binary deployment (packed: true): packed +-1 codes have no zero, so pruned weights "
         "cannot stay zero; drop packed or the pruning", when=lambda pr, q: bool(_get(q, "packed", False))
         and _get(pr, "method") in UNSTRUCTURED),
    Rule(("quantize", "*"), ("compress", "*"),
         "quantize packed: true + compress: the weights are already bit-packed, Deep Compression has no conv / linear "
         "weight left to encode; drop one of them", when=lambda q, c: bool(_get(q, "packed", False))),
    # -- everything else composes -------------------------------------------------------------------
    Rule(("prune", "*"), ("quantize", "*"), None, note="masked quantized layers, zeros kept in codes and export"),
    Rule(("quantize", "*"), ("compress", "*"), None, note="quantized weights baked, then Deep Compression"),
    Rule(("*", "*"), ("*", "*"), None),
)

ORDER = ("prune", "activation_sparsity", "quantize", "precision", "finetune", "compress")
_KEYS = {"precision": "train"}


def method_name(block: str, config: Any) -> str:
    """The method a block's config names (``finetune``: 'finetune')."""
    if block == "finetune":
        return "finetune"
    key = _KEYS.get(block, "method")
    name = _get(config, key)
    return str(name if name is not None else ("deep-compression" if block == "compress" else ""))


def _matches(rule_side: tuple[str, str], block: str, method: str) -> bool:
    return fnmatch.fnmatchcase(block, rule_side[0]) and fnmatch.fnmatchcase(method, rule_side[1])


def find_rule(a: tuple[str, Any], b: tuple[str, Any]) -> Rule:
    """The first rule for two (block, config) pairs, in recipe order (the table is symmetric in use)."""
    (ba, ca), (bb, cb) = sorted([a, b], key=lambda p: ORDER.index(p[0]))
    ma, mb = method_name(ba, ca), method_name(bb, cb)
    for rule in RULES:
        if _matches(rule.a, ba, ma) and _matches(rule.b, bb, mb) and (rule.when is None or rule.when(ca, cb)):
            return rule
    raise AssertionError("the catch-all rule matches every pair")  # pragma: no cover


def check_composition(blocks: Mapping[str, Any], where: str = "") -> None:
    """Raise ``EffdnnError`` (one line) for the first pair of ``blocks`` (block name -> parsed config or
    dict; None / absent: not used) that does not compose; see ``RULES``."""
    present = [(b, c) for b, c in blocks.items() if c is not None and b in ORDER]
    present = [(b, c) for b, c in present if b != "finetune" or (_get(c, "epochs", 1) or 0) > 0]
    present.sort(key=lambda p: ORDER.index(p[0]))
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            rule = find_rule(a, b)
            if rule.refusal is not None:
                raise EffdnnError(f"{where + ': ' if where else ''}{rule.refusal}")


__all__ = ["BINARY_METHODS", "QAT_METHODS", "RULES", "Rule", "check_composition", "find_rule", "method_name"]
