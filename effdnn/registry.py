"""Method registry: a technique is a config model plus a transform, looked up by name.

Every recipe block (``quantize``, ``prune``, ``activation_sparsity``, ``precision``, ``compress``) has
its own :class:`Registry`. A block is a dict whose ``key`` field (``method`` by default) names the
technique; the rest is validated by that technique's pydantic config, so an unknown key or a bad
value is reported with its full key path (``experiments[1].quantize.weight.bits: ...``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Generic, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from .errors import EffdnnError, NotAvailableYet

C = TypeVar("C", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, models are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # keys a dump leaves out while unset (None): fields added later keep the dumps, and so the cache
    # keys hashed from them, of configs that do not use them what they were
    omit_if_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key in self.omit_if_none:
                if data.get(key) is None:
                    data.pop(key, None)
        return data


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """The first error of a pydantic ValidationError as one line ``a.b[2].c: message``."""
    e = err.errors()[0]
    path = prefix
    for part in e["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{path or '<root>'}: {msg}"


@dataclass(frozen=True)
class Method(Generic[C]):
    name: str
    config: type[C]
    transform: Callable[..., Any]
    summary: str


class Registry:
    """Name -> (config model, transform). ``key`` is the block field that names the method."""

    def __init__(self, block: str, key: str = "method", default: str | None = None) -> None:
        self.block, self.key, self.default = block, key, default
        self._methods: dict[str, Method] = {}

    def register(self, name: str, config: type[C], summary: str = "") -> Callable:
        """Decorator for ``transform(module, config, ctx)``. ``config`` must declare the ``key`` field."""
        if self.key not in config.model_fields:
            raise TypeError(f"{config.__name__} must declare the field {self.key!r}")

        def deco(fn: Callable) -> Callable:
            if name in self._methods:
                raise ValueError(f"{self.block} method {name!r} registered twice")
            self._methods[name] = Method(name, config, fn, summary or (fn.__doc__ or "").strip().split("\n")[0])
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._methods)

    def methods(self) -> list[Method]:
        return [self._methods[n] for n in self.names()]

    def get(self, name: str, path: str = "") -> Method:
        if name not in self._methods:
            where = path or self.block
            if not self._methods:
                raise NotAvailableYet(f"{where}: '{self.block}' is not available yet in this version of effdnn")
            raise EffdnnError(f"{where}.{self.key}: unknown {self.block} method {name!r} (known: {', '.join(self.names())})")
        return self._methods[name]

    def parse(self, spec: Any, path: str = "") -> BaseModel:
        """A config object, or the plain dict of a recipe block, -> the validated config of its method."""
        path = path or self.block
        if isinstance(spec, BaseModel):
            self.method_of(spec)
            return spec
        if not isinstance(spec, dict):
            raise EffdnnError(f"{path}: expected a mapping or a config object, got {type(spec).__name__}")
        name = spec.get(self.key, self.default)
        if name is None:
            raise EffdnnError(f"{path}.{self.key}: missing (known: {', '.join(self.names()) or 'none yet'})")
        method = self.get(str(name), path)
        body = {**spec, self.key: name}
        try:
            return method.config.model_validate(body)
        except ValidationError as err:
            raise EffdnnError(format_validation_error(err, path)) from None

    def method_of(self, config: BaseModel) -> Method:
        return self.get(str(getattr(config, self.key)))

    def apply(self, module: Any, spec: Any, *args: Any, **kwargs: Any) -> Any:
        config = self.parse(spec)
        return self.method_of(config).transform(module, config, *args, **kwargs)


QUANTIZE = Registry("quantize")
PRUNE = Registry("prune")
ACTIVATION_SPARSITY = Registry("activation_sparsity")
PRECISION = Registry("precision", key="train")
COMPRESS = Registry("compress", default="deep-compression")

REGISTRIES: dict[str, Registry] = {r.block: r for r in (QUANTIZE, PRUNE, ACTIVATION_SPARSITY, PRECISION, COMPRESS)}
