"""The package imports in one direction (docs/ARCHITECTURE.md): no cycles, no library module
importing the command line, and no module importing a layer above its own."""

import ast
import sys
from pathlib import Path

import nrt

SRC = Path(nrt.__file__).parent

# lowest first; a module may import its own layer and the layers below it
LAYERS = [
    ("foundation", ["nrt.errors", "nrt.config", "nrt.tokens", "nrt.data", "nrt.data_prep", "nrt.model_loading",
                    "nrt.tiny",
                    "nrt.rewards", "nrt.advantages", "nrt.shaping", "nrt.scoring", "nrt.loss", "nrt.rollout_correction",
                    "nrt.option_types", "nrt.outputs",
                    "nrt.presets"]),
    ("engine", ["nrt.engine"]),
    ("evaluation and serving", ["nrt.evaluation", "nrt.serving"]),
    ("training", ["nrt.training"]),
    ("experiments and gym", ["nrt.experiments", "nrt.gym"]),
    ("public API (the package root, names loaded on first use)", ["nrt"]),
    ("commands", ["nrt.commands", "nrt.__main__"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def nrt_imports(path: Path) -> set[str]:
    """Every nrt module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "nrt"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nrt":
            for a in node.names:  # `from nrt.gym import tasks` imports the module nrt.gym.tasks
                sub = f"{node.module}.{a.name}"
                found.add(sub if (SRC.parent / Path(*sub.split("."))).with_suffix(".py").exists() else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): nrt_imports(p) for p in SRC.rglob("*.py")}


def layer_of(module: str) -> int:
    """The layer of the longest matching prefix (`nrt` itself matches only the package root)."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "nrt" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer of docs/ARCHITECTURE.md"
    return best[0]


def test_every_module_has_a_layer_and_imports_none_above_it():
    wrong = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {i} ({LAYERS[layer_of(i)][0]})"
             for m, imports in graph().items() for i in imports if layer_of(i) > layer_of(m)]
    assert not wrong, "\n".join(wrong)


def test_no_library_module_imports_the_commands():
    wrong = [f"{m} imports {i}" for m, imports in graph().items() if layer_of(m) != len(LAYERS) - 1
             for i in imports if i.startswith("nrt.commands")]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for i in sorted(g.get(m, ())):
            if i == m:
                continue
            if state.get(i) == 1:
                return path + [m, i]
            if state.get(i) is None and (cycle := visit(i, path + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(g):
        if state.get(m) is None:
            cycle = visit(m, [])
            assert cycle is None, " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_the_checks_catch_a_cycle_an_upward_import_and_a_library_importing_the_commands(tmp_path, monkeypatch):
    """The walker itself, on a made-up package: each of the three checks above fails on it."""
    assert layer_of("nrt.engine.sampling") < layer_of("nrt.training.trainer") < layer_of("nrt.commands.cli")
    fake = tmp_path / "nrt"
    (fake / "engine").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "engine" / "__init__.py").write_text("")
    (fake / "engine" / "a.py").write_text("def f():\n    from nrt.commands.cli import main\n")  # inside a function
    (fake / "rewards.py").write_text("from nrt.engine import a\nimport nrt.loss\n")  # upward
    (fake / "loss.py").write_text("from nrt.rewards import x\n")  # rewards <-> loss
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    g = graph()
    assert g["nrt.engine.a"] == {"nrt.commands.cli"} and g["nrt.rewards"] == {"nrt.engine.a", "nrt.loss"}
    for check in (test_every_module_has_a_layer_and_imports_none_above_it, test_no_library_module_imports_the_commands,
                  test_no_import_cycle):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} passed on a package that breaks it")
