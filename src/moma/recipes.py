"""Named config recipes shipped with the package (YAML overrides of the dataclass defaults)."""

from __future__ import annotations

from pathlib import Path

RECIPE_DIR = Path(__file__).with_name("configs")


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def resolve_recipe(name_or_path: str) -> Path:
    """A YAML path as given, or the shipped recipe of that name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = RECIPE_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"{name_or_path}: no such config file or recipe (recipes: {', '.join(available_recipes())})")
