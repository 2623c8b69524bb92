"""Named files shipped with the package: config recipes and experiment grids (YAML overrides of the
dataclass defaults), found by name or used by path."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RECIPE_DIR = PACKAGE_DIR / "configs"
EXPERIMENT_DIR = RECIPE_DIR / "experiments"


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def _resolve(name_or_path: str, folder: Path) -> Path | None:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = folder / f"{name_or_path}.yaml"
    return candidate if candidate.is_file() else None


def resolve_recipe(name_or_path: str) -> Path:
    """A YAML path as given, or the shipped recipe of that name."""
    found = _resolve(name_or_path, RECIPE_DIR)
    if found is None:
        raise FileNotFoundError(f"{name_or_path}: no such config file or recipe "
                                f"(recipes: {', '.join(available_recipes())})")
    return found


def resolve_experiment(name_or_path: str) -> str:
    """A path as given, or a shipped grid (``emodb-table1`` -> moma/configs/experiments/emodb-table1.yaml).

    A name that is neither is returned unchanged, so the loader's own error names it.
    """
    if Path(name_or_path).is_file():
        return name_or_path
    found = _resolve(name_or_path, EXPERIMENT_DIR)
    return str(found) if found is not None else name_or_path


def display_path(path: str | Path) -> str:
    """A path as a reader can use it: packaged files by their place in the package (``moma/configs/...``),
    others relative to the current directory when they are under it."""
    p = Path(path).resolve()
    if p.is_relative_to(PACKAGE_DIR):
        return f"moma/{p.relative_to(PACKAGE_DIR).as_posix()}"
    return p.relative_to(Path.cwd()).as_posix() if p.is_relative_to(Path.cwd()) else str(path)
