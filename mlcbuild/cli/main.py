"""`mlcbuild` command line. Heavy modules are imported by the commands that need them."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from mlcbuild import __version__

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}

CACHE_HELP = """\
ls      every cached result: key, kind, what, size, when built
du      disk use: results, objects, quarantined objects, leftovers of killed builds, logs
verify  re-hash every object (finds what the cheap stat check cannot); exit 1 on findings
gc      remove what is not needed. Plain `gc` keeps every well-formed result and the objects
        it names, and removes: objects no result names, malformed result entries,
        quarantined objects, what killed builds left (work dirs no build holds,
        temp files), and no-op/plan stamps that no longer hold. `--keep RECIPE...`
        also drops every result those recipes do not use; `--older-than DAYS` drops
        results built more than DAYS ago (0 drops them all).
        gc waits for running builds (they hold a lease on the cache) and lists what goes;
        `--dry-run` lists it and removes nothing."""


def command(name: str):
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return register


EXIT_ELSEWHERE = 3

EXIT_CODES = f"""exit status:
  0  everything asked for is built (or was cached)
  1  a node failed
  2  a mistake in the recipe or the flags
  {EXIT_ELSEWHERE}  built all that this machine can; some nodes need a toolchain it lacks and no cache has
     their result (a cached one is used without the toolchain): build them
     where it is, with the command printed for each (`mlcbuild build RECIPE --only CELL`),
     or list every cell with `mlcbuild matrix RECIPE`"""

MATRIX_HELP = """One cell per target variant, plus one 'weights' cell (convert + gen-config, no toolchain,
on ubuntu-latest). Each cell: a stable id (<recipe name>-<cell>), the runner labels its target needs
(`runner:` in the target definitions), the command that builds it (`mlcbuild build RECIPE --only CELL`) and the
artifact paths it produces. Not split by quantization: a toolchain runner (GPU box, Mac) is the scarce
resource and its setup costs minutes, so it builds every quantization of its target (-q narrows).
A compile cell builds its own gen-config (config and tokenizer only) and downloads no weight file.

--affected lists only cells with a node whose key has no result in the shared cache. Compile keys
depend on gen-config's output, so gen-config (seconds, no weights) runs here in a scratch store;
a target that pins its tool versions (`toolchain_versions:`, as the builtin cuda pins nvcc) needs
no tool here to compute its keys, so its cells are exact on a machine without nvcc; a key that cannot
be computed here (a tool this machine lacks and no pin) counts as affected.

formats: json ({"cells": [...]}); github (strategy.matrix JSON with `include`, for fromJSON);
gitlab (a child-pipeline YAML, one job per runner with `parallel: matrix`, tags = runner labels)."""


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number ≥ 0 (no nan, no inf)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be > 0 and ≤ 1, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line (argparse would print the whole usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """Options every command accepts, before or after its name; after it, SUPPRESS keeps the one given before."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument("--cache-dir", type=Path, help="cache root (default: $MLCBUILD_CACHE_DIR or ./cache)", **default)
    p.add_argument("--debug", action="store_true", help="show tracebacks", **default)
    p.add_argument(
        "--remote",
        metavar="URL",
        help="shared cache beside the local one: PATH, file://, s3://BUCKET/PREFIX, http(s)://HOST/PREFIX"
        " (default: $MLCBUILD_REMOTE); what `matrix --affected` asks",
        **default,
    )
    p.add_argument(
        "--remote-read-only",
        action="store_true",
        help="never upload to the remote ($MLCBUILD_REMOTE_READ_ONLY=1)",
        **default,
    )
    p.add_argument(
        "--signing-key",
        type=Path,
        metavar="PEM",
        help="ed25519 key signing uploaded entries ($MLCBUILD_SIGNING_KEY)",
        **default,
    )
    p.add_argument(
        "--link-type",
        metavar="TYPES",
        help="how source files (local model folders, HF cache blobs) enter the cache: the first of "
        "reflink, hardlink, copy that works (default: $MLCBUILD_LINK_TYPE or reflink,hardlink,copy; "
        "hardlink shares the inode with your file: no second copy, and editing it invalidates the cache entry)",
        **default,
    )


BUILD_HELP = """Build recipes, running only the nodes whose key has no cached result.

A model folder is placed only when its convert and gen-config both succeeded (never without
tensor-cache.json); a library when its compile succeeded and no node of its model folder failed.
A failed variant places nothing and leaves what an earlier build placed as it was. Only files
mlcbuild placed are ever removed from an output folder; a placed file edited there is restored."""


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mlcbuild",
        description="Declarative builds of MLC-LLM artifacts.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"mlcbuild {__version__}")
    _global_options(p, suppress=False)
    common = _Parser(add_help=False)
    _global_options(common, suppress=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def subcommand(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    def only(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--only",
            metavar="CELL",
            help="only one matrix cell: 'weights' or a target variant such as 'cuda-sm_90a'; or nodes: an id prefix or part of a label",
        )

    def selection(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-t", "--target", action="append", default=[], help="only this target (repeatable)")
        sp.add_argument("-q", "--quant", action="append", default=[], help="only this quantization (repeatable)")
        sp.add_argument("--frozen", action="store_true", help="fail if the lock file would change")

    b = subcommand(
        "build",
        help="build recipes (only what changed)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=BUILD_HELP,
    )
    b.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    selection(b)
    only(b)
    b.add_argument(
        "-j", "--jobs", type=positive_int, default=os.cpu_count() or 1, metavar="N",
        help="local executor: run up to N steps at once (default: the number of CPUs)",
    )
    b.add_argument("--dry-run", action="store_true", help="show what would run")
    b.add_argument("--keep-going", action="store_true", help="build what can be built after a failure")
    b.add_argument("--force", action="store_true", help="rebuild even when cached (also replaces modified cache objects)")
    b.add_argument("--check", action="store_true", help="rebuild cached nodes in scratch space and compare bytes")
    b.add_argument("--executor", choices=["local", "ray"], default="local", help="where nodes that must run go (default: local)")
    b.add_argument("--ray-address", default=None, help="ray: cluster address (default: $RAY_ADDRESS, else a local Ray); workers must see the same --cache-dir")

    pl = subcommand("plan", help="every node: key, cached or why it will run")
    pl.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    selection(pl)
    only(pl)

    m = subcommand(
        "matrix",
        help="CI matrix: one cell per target variant plus 'weights', with runner, command, artifacts",
        description=MATRIX_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    selection(m)
    m.add_argument("--format", choices=["github", "gitlab", "json"], default="json")
    m.add_argument("--affected", action="store_true", help="only cells with a node whose key has no result in the remote cache")
    m.add_argument("-j", "--jobs", type=positive_int, default=os.cpu_count() or 1, metavar="N", help="--affected: parallel gen-config runs")

    e = subcommand("explain", help="which input of a node changed since its cached build")
    e.add_argument("recipe", type=Path, help="recipe file (YAML)")
    e.add_argument("node", help="the key prefix `plan` shows, a node id prefix, or part of a label ('q4f16_1 llvm')")
    selection(e)

    g = subcommand("graph", help="print the build graph")
    g.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    g.add_argument("--format", choices=["mermaid", "dot", "json"], default="mermaid")
    selection(g)

    c = subcommand(
        "cache",
        help="inspect and maintain the cache",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=CACHE_HELP,
    )
    c.add_argument("action", choices=["ls", "du", "gc", "verify", "push", "pull"])
    c.add_argument("recipes", nargs="*", type=Path, help="push/pull: what these recipes need, to/from --remote")
    c.add_argument("--keep", nargs="*", type=Path, default=None, help="gc: drop every result these recipes do not use")
    c.add_argument("--older-than", type=non_negative_float, default=None, metavar="DAYS", help="gc: drop results built more than DAYS ago (0: all)")
    c.add_argument("--dry-run", action="store_true", help="gc: print what would be removed, remove nothing")
    c.add_argument("--repair", action="store_true", help="verify: quarantine corrupt objects, delete malformed entries")

    lk = subcommand("lock", help="pin each HF revision to its commit sha")
    lk.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML)")
    lk.add_argument("--check", action="store_true", help="fail if the lock file would change")

    v = subcommand("verify", help="check artifacts on disk against their provenance (sha256 of each file)")
    v.add_argument("artifacts", nargs="+", type=Path, help="a model folder, a library, or a .provenance.json")

    subcommand("targets", help="which targets this machine can build, and why not")
    subcommand("templates", help="conversation templates a recipe's conv_template may name (default: auto)")

    from mlcbuild.cli.runtime_commands import add_parsers

    add_parsers(subcommand)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cache_dir is not None:
        os.environ["MLCBUILD_CACHE_DIR"] = str(args.cache_dir)
    if args.command == "build" and not (args.force or args.check or args.dry_run):
        from mlcbuild.execute.noop import up_to_date
        from mlcbuild.store import default_cache_dir

        if (line := up_to_date(default_cache_dir(), vars(args))) is not None:
            print(line)
            return 0
    if args.command == "plan":
        from mlcbuild.execute.noop import saved_plan
        from mlcbuild.store import default_cache_dir

        if (text := saved_plan(default_cache_dir(), vars(args))) is not None:
            sys.stdout.write(text)
            return 0
    from mlcbuild.cli import commands, runtime_commands  # noqa: F401  (registers the commands)
    from mlcbuild.errors import MlcbuildError, redact

    try:
        link_type = getattr(args, "link_type", None)
        if link_type is not None or os.environ.get("MLCBUILD_LINK_TYPE"):
            from mlcbuild.store.ingest import ENV_LINK_TYPE, parse_link_types

            given, where = (link_type, "--link-type") if link_type is not None else (os.environ[ENV_LINK_TYPE], ENV_LINK_TYPE)
            os.environ[ENV_LINK_TYPE] = ",".join(parse_link_types(given, where))
        return COMMANDS[args.command](args)
    except MlcbuildError as e:
        if args.debug:
            raise
        print(f"mlcbuild: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        if args.debug:
            raise
        print(redact(f"mlcbuild: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)"), file=sys.stderr)
        return 70
    except KeyboardInterrupt:
        print("mlcbuild: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
