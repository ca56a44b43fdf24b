"""Whether a callable reference (``package.module:function``) names something that exists, found
from the module's source with ``ast``: nothing of the user's code is imported or run.

The module is looked for as the workers find it: beside the campaign file first, then on the
controller's path. A name counts as defined when the module's top level binds it in any way (``def``,
``class``, assignment, import, ``for``/``with`` targets, ...). Where the source cannot tell (a
compiled module, ``from x import *``, a module ``__getattr__``, writes through ``globals()``), the
name is taken as present: the check refuses only what is certain to fail.
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from corral.errors import SpecError


@dataclass(frozen=True)
class ModuleNames:
    """What a module's source defines at its top level; ``names`` None when the source cannot tell."""

    path: Path | None
    names: frozenset[str] | None
    functions: tuple[str, ...] = ()


def check_reference(ref: str, roots: list[Path], *, file: str, key: str) -> None:
    """Refuse ``ref`` when its module cannot be found or surely lacks the function."""
    module, _, function = ref.partition(":")
    found = module_names(module, roots)
    if found is None:
        raise SpecError(f"cannot find the module {module!r} of {ref!r}", file=file, key=key,
                        expected=f"{module.replace('.', '/')}.py beside the campaign file, or an installed package")
    if found.names is None or function in found.names:
        return
    shown = ", ".join(found.functions[:12]) + (", ..." if len(found.functions) > 12 else "")
    raise SpecError(f"the module {module!r} ({found.path}) has no function {function!r}", file=file, key=key,
                    expected=f"a function of {module}: {shown}" if shown else f"a function defined in {found.path}",
                    suggestion=_closest(function, found.functions or tuple(sorted(found.names)), module))


def module_names(module: str, roots: list[Path]) -> ModuleNames | None:
    """The names ``module`` defines, or None when no such module can be found."""
    spec = _find_spec(module, roots)
    if spec is None:
        return None
    if spec is _NOT_A_PACKAGE:
        return ModuleNames(path=None, names=None)
    origin = spec.origin if spec.has_location else None
    if not origin or not origin.endswith(".py"):
        return ModuleNames(path=Path(origin) if origin else None, names=None)
    path = Path(origin)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        # Importing it will say what is wrong; a worker's own Python may read syntax this one cannot.
        return ModuleNames(path=path, names=None)
    return _defined(tree, path)


_NOT_A_PACKAGE = object()


def _find_spec(module: str, roots: list[Path]):
    parts = module.split(".")
    try:
        spec = importlib.machinery.PathFinder.find_spec(parts[0], [str(root) for root in roots])
        if spec is None:
            # Installed packages, also those that editable installs put behind their own finders;
            # a top-level name has no parent package, so nothing is imported to find it.
            spec = importlib.util.find_spec(parts[0])
        for depth in range(1, len(parts)):
            if spec is None:
                return None
            if not spec.submodule_search_locations:
                # A module's attribute that is itself a module (os.path): only importing can tell.
                return _NOT_A_PACKAGE
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth + 1]),
                                                            list(spec.submodule_search_locations))
    except (ImportError, ValueError):
        return None
    return spec


def _defined(tree: ast.Module, path: Path) -> ModuleNames:
    names: set[str] = set()
    functions: list[str] = []
    unknowable = False
    for node in _top_level_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            functions.append(node.name)
            if node.name == "__getattr__" and not isinstance(node, ast.ClassDef):
                unknowable = True
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    unknowable = True
                else:
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("globals", "setattr"):
            unknowable = True
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):   # ``global x`` in a function binds x in the module when it runs
            names.update(node.names)
    public = tuple(sorted(n for n in names if not n.startswith("_")))
    shown = tuple(sorted(n for n in functions if not n.startswith("_"))) or public
    return ModuleNames(path=path, names=None if unknowable else frozenset(names), functions=shown)


def _top_level_nodes(tree: ast.Module):
    """Every node of the module's top level, into ``if``/``try``/``with``/``for`` blocks, but not into
    the bodies of functions, classes, lambdas and comprehensions (their names are their own)."""
    stack: list[ast.AST] = list(reversed(tree.body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            # Decorators and defaults run at the top level; the body does not.
            stack.extend(reversed([*node.decorator_list, *getattr(node, "bases", []),
                                   *_defaults(node)]))
            continue
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _defaults(node) -> list[ast.AST]:
    arguments = getattr(node, "args", None)
    if not isinstance(arguments, ast.arguments):
        return []
    return [*arguments.defaults, *(d for d in arguments.kw_defaults if d is not None)]


def _closest(word: str, options: tuple[str, ...], module: str) -> str | None:
    found = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"{module}:{found[0]}" if found else None
