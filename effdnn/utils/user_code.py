"""Load a user's ``"path/to/file.py:function"`` reference (models, data sets)."""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import EffdnnError, MissingDependency


def is_user_ref(name: str) -> bool:
    return ":" in name and name.split(":", 1)[0].endswith(".py")


def resolve_user_file(file: str, base_dir: str | Path | None = None) -> Path | None:
    """Where ``file`` is: an absolute path as it is; a relative one in ``base_dir`` (the recipe's
    folder) first, then in the working folder. None if in neither."""
    path = Path(file)
    candidates = [path] if path.is_absolute() or base_dir is None else [Path(base_dir) / path, path]
    return next((c for c in candidates if c.is_file()), None)


def load_user_function(ref: str, base_dir: str | Path | None = None) -> Callable[..., Any]:
    """``"file.py:fn"`` -> the function; a relative path is taken from ``base_dir`` (the recipe's
    folder) first, then from the working folder."""
    file, _, fn_name = ref.rpartition(":")
    path = resolve_user_file(file, base_dir)
    if path is None:
        where = f" (looked in {base_dir} and in the working folder)" if base_dir is not None and \
            not Path(file).is_absolute() else ""
        raise EffdnnError(f"{ref}: file {file!r} not found{where}")
    mod_name = "effdnn_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    try:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        raise MissingDependency(f"{ref}: needs the Python package {e.name!r}, which is not installed; "
                                "skipped") from None
    except (Exception, SystemExit) as e:  # a user file may raise anything, or exit: report it in one line
        raise EffdnnError(f"{ref}: importing {path} failed: {_what(e)}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise EffdnnError(f"{ref}: {path} has no function {fn_name!r}")
    return fn


def call_user(ref: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a user function; whatever it raises becomes one EffdnnError line."""
    try:
        return fn(*args, **kwargs)
    except EffdnnError:
        raise
    except ModuleNotFoundError as e:  # an optional package the user's code needs: say which, skip
        raise MissingDependency(f"{ref}: needs the Python package {e.name!r}, which is not installed; "
                                "skipped") from None
    except (Exception, SystemExit) as e:
        raise EffdnnError(f"{ref}: {_what(e)}") from None


def _what(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    text = ' '.join(str(e).split())
    if "torchvision::" in text:  # a torchvision wheel built for another torch (e.g. CUDA's beside the CPU torch)
        text += " (the installed torchvision was built for another torch; install the matching release or remove it)"
    return f"raised {type(e).__name__}: {text}"
