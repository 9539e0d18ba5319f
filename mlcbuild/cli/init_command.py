"""`mlcbuild init HF_ID|FOLDER [-o RECIPE]`: a starter recipe (mlcbuild.recipe.init)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable

from mlcbuild.cli.main import command
from mlcbuild.errors import UserError


def add_parser(subcommand: Callable[..., argparse.ArgumentParser]) -> None:
    i = subcommand("init", help="write a starter recipe for a model folder or Hugging Face repo id, filled in from its config.json")
    i.add_argument("model", metavar="HF_ID|FOLDER", help="a Hugging Face checkpoint folder, an MLC weight folder, or a repo id (org/name)")
    i.add_argument("-o", "--output", type=Path, default=None, metavar="RECIPE", help="the recipe file to write (default: print it)")
    i.add_argument("--force", action="store_true", help="overwrite RECIPE if it exists")


@command("init")
def init_cmd(args: argparse.Namespace) -> int:
    """The recipe is checked by loading it back before anyone builds it."""
    from mlcbuild.recipe.init import render, starter

    out: Path | None = args.output
    if out is not None and out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it", field="--output")
    given = ["mlcbuild", "init", args.model] + (["-o", str(out)] if out is not None else [])
    text = render(starter(args.model, out), shlex.join(given))
    if out is None:
        sys.stdout.write(text)
        return 0
    from mlcbuild.recipe.load import load_recipe

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    recipe = load_recipe(out)
    print(f"wrote {out}: {recipe.name}, {', '.join(recipe.quantizations)} for {', '.join(map(str, recipe.targets))}; next: mlcbuild build {out}")
    return 0
