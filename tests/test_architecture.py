"""The package's layout by stage (docs/architecture.md): each module imports only its own stage
and the stages before it, no import cycles, no module past 400 lines, one place per layer type.

Imports are read from the source with ``ast`` (function-level imports included), so a lazy
import cannot hide an upward dependency. ``from a.b import c`` counts as an import of ``a.b.c``
when that is a module, else of ``a.b``. The package root ``tf_dtd`` is the public facade: every
stage may import it (it loads the public names lazily) and it imports nothing above stage 0.
"""

import ast
import os

import pytest

import tf_dtd

ROOT = os.path.dirname(os.path.abspath(tf_dtd.__file__))
MAX_LINES = 400

# In order; a module belongs to the stage of its longest matching prefix.
STAGES = (
    ("foundations", ("tf_dtd.errors", "tf_dtd.preset_names", "tf_dtd.files", "tf_dtd.boxes",
                     "tf_dtd.checks", "tf_dtd.registry", "tf_dtd.rules", "tf_dtd.composites",
                     "tf_dtd.visualize")),
    ("forward model", ("tf_dtd.model",)),
    ("relevance model", ("tf_dtd.relevance",)),
    ("reports", ("tf_dtd.report",)),
    ("evaluation and training", ("tf_dtd.evaluate", "tf_dtd.callbacks")),
    ("application data", ("tf_dtd.app",)),
    ("data sets", ("tf_dtd.scale",)),
    ("clusters", ("tf_dtd.beam",)),
    ("command line", ("tf_dtd.app.cli", "tf_dtd.__main__")),
)


def _modules():
    """{dotted name: path} of every module of the package."""
    modules = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


MODULES = _modules()


def _imports(name, path):
    """The tf_dtd modules that module ``name`` imports (itself excluded)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]

    def module_of(dotted):
        while dotted and dotted not in MODULES:
            dotted = dotted.rpartition(".")[0]
        return dotted

    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        found |= {module_of(t) for t in targets if t == "tf_dtd" or t.startswith("tf_dtd.")}
    return found - {name, ""}


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _stage(name):
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(STAGES)
               for prefix in prefixes if name == prefix or name.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_every_module_has_a_stage():
    assert [name for name in MODULES if name != "tf_dtd" and _stage(name) is None] == []


def test_no_upward_imports():
    upward = sorted((name, target) for name, targets in IMPORTS.items() if name != "tf_dtd"
                    for target in targets
                    if target != "tf_dtd" and _stage(target) > _stage(name))
    assert upward == []
    assert {_stage(target) for target in IMPORTS["tf_dtd"]} <= {0}


def test_no_import_cycles():
    graph = {name: targets - {"tf_dtd"} for name, targets in IMPORTS.items() if name != "tf_dtd"}
    assert _cycles(graph) == []


def test_the_checks_can_fail():
    # A module of the first stage that imported the command line would be caught, and so would
    # a cycle through two modules.
    assert _stage("tf_dtd.app.cli") > _stage("tf_dtd.errors")
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert "tf_dtd.relevance.plan" in IMPORTS["tf_dtd.app.cli"]  # function-level imports count


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    with open(MODULES[name], encoding="utf-8") as handle:
        assert sum(1 for _ in handle) <= MAX_LINES


def test_one_place_registers_each_built_in_layer_type():
    # Only the registry's table says which handler a Keras layer class gets: built-in layer
    # types are registered in one module, the way users register theirs.
    registering = sorted(name for name, path in MODULES.items()
                         if "registry.register(" in open(path, encoding="utf-8").read())
    assert registering == ["tf_dtd.relevance.handlers"]
