"""The layout of `experiments/`: generic code imports no setting, settings import each other never,
every registered setting provides the `Setting` members, and modules stay small."""

import ast
import pathlib

import ml_collections
import pytest

from experiments.core import config_utils
from experiments.training import setting

ROOT = pathlib.Path(__file__).resolve().parents[2] / "experiments"
SETTING_PACKAGES = ("experiments.vision", "experiments.language")
MAX_MODULE_LINES = 520


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every module `path` imports, `from package import module` resolved to the module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


MODULES = {_module_name(path): path for path in ROOT.rglob("*.py")}


def test_the_walk_finds_the_settings_imports():
    # The check below can fail: the settings' own modules do import their packages.
    assert "experiments.language.data" in _imports(MODULES["experiments.language.setting"])


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if not any(_within(m, p) for p in SETTING_PACKAGES))
)
def test_generic_code_imports_no_setting(module):
    imported = _imports(MODULES[module])
    assert not [name for name in imported if any(_within(name, p) for p in SETTING_PACKAGES)]


@pytest.mark.parametrize("package", SETTING_PACKAGES)
def test_settings_do_not_import_each_other(package):
    others = [p for p in SETTING_PACKAGES if p != package]
    for module, path in MODULES.items():
        if _within(module, package):
            assert not [n for n in _imports(path) if any(_within(n, p) for p in others)], module


def test_modules_stay_small():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long


@pytest.mark.parametrize("name", sorted(setting.SETTINGS))
def test_every_registered_setting_provides_the_interface(name):
    registered = setting.get(name)
    assert registered.name == name
    members = [m for m in dir(setting.Setting) if not m.startswith("_")]
    members += list(setting.Setting.__annotations__)
    assert not [m for m in members if not hasattr(registered, m)]


def test_an_unknown_setting_lists_the_registered_ones():
    config = ml_collections.ConfigDict({"setting": "images"})
    with pytest.raises(config_utils.ConfigError, match=r"'images'.*\['language', 'vision'\]"):
        setting.of_config(config)
