"""The import rule of ARCHITECTURE.md: a lower layer of vqlib never imports a higher one.

Every ``import`` in every vqlib module counts, including imports inside functions: a recipe
hidden in a model file would still make the model depend on the training loop.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vqlib"

# Layers from the bottom up. A module may import its own layer and any layer below it, except
# that the model layers (quantizers, priors, tokenizers, losses) never import the data or the
# training loop, and book/ (plots, exercises, the seeds' code) imports only core/.
LAYERS = ("core", "data", "book", "quantizers", "priors", "tokenizers", "losses", "training", "judges", "recipes")
MODEL_LAYERS = {"quantizers", "priors", "tokenizers", "losses"}
FORBIDDEN = {layer: {"data", "training"} for layer in MODEL_LAYERS} | {
    "book": set(LAYERS) - {"core", "book"}, "data": {"book"}}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""  # "" for vqlib/__init__.py


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        found[".".join(p for p in rel.parts if p != "__init__") or "vqlib"] = path
    return found


def vqlib_imports(path: Path) -> set[str]:
    """Every vqlib module ``path`` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("vqlib.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vqlib"):
            if node.module == "vqlib":
                names |= {f"vqlib.{a.name}" for a in node.names if a.name != "__version__"}
            elif node.module.count(".") == 1:  # from vqlib.core import profile
                names |= {f"{node.module}.{a.name}" for a in node.names}
            else:
                names.add(node.module)
    return names


def violations() -> list[str]:
    found = []
    for module, path in modules().items():
        layer = layer_of(module)
        if not layer:
            continue
        for imported in vqlib_imports(path):
            target = layer_of(imported)
            if target not in LAYERS:
                found.append(f"{module} imports {imported}, which is in no layer")
            elif LAYERS.index(target) > LAYERS.index(layer) or target in FORBIDDEN.get(layer, ()):
                found.append(f"{module} ({layer}) imports {imported} ({target})")
            elif layer == target == "recipes" and imported.split(".")[-1][:4] >= module.split(".")[-1][:4]:
                found.append(f"{module} imports {imported}: a chapter's recipe uses earlier chapters only")
    return found


def test_every_module_is_in_a_layer():
    layers = {layer_of(m) for m in modules()} - {""}
    assert layers <= set(LAYERS), f"folders without a layer in ARCHITECTURE.md: {sorted(layers - set(LAYERS))}"


def test_no_layer_imports_a_higher_one():
    assert violations() == [], "layer rule broken:\n" + "\n".join(violations())


@pytest.mark.parametrize("layer", LAYERS)
def test_subpackage_init_is_empty(layer):
    # the chapter re-execution scan follows imports: an __init__ that imports its modules would make
    # every chapter depend on every module of the layer
    assert (PACKAGE / layer / "__init__.py").read_text().strip() == ""


def test_recipes_say_their_chapter():
    for path in sorted((PACKAGE / "recipes").glob("ch*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert doc.startswith(f"Chapter {int(path.name[2:4])}:"), f"{path.name} must start 'Chapter N:'"


def test_the_rule_catches_a_model_importing_the_loop(tmp_path, monkeypatch):
    # the checker itself: a tokenizer that imports the training loop is reported
    fake = tmp_path / "vqlib"
    (fake / "tokenizers").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "tokenizers" / "__init__.py").write_text("")
    (fake / "tokenizers" / "bad.py").write_text("def f():\n    from vqlib.training.loop import fit\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert violations() == ["vqlib.tokenizers.bad (tokenizers) imports vqlib.training.loop (training)"]
