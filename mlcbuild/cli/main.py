"""`mlcbuild` command line: the top-level parser, the no-op fast path, and errors → one line and an
exit code. Each command group keeps its parser beside its handlers (`add_parsers` in
cli/build_commands.py, cache_commands.py, info_commands.py, runtime_commands.py,
mlc_commands.py, init_command.py); those modules import heavy ones only inside their handlers,
so building the parser stays cheap."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from mlcbuild import __version__

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


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


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line (argparse would print the whole usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """Options every command accepts, before or after its name; after it, SUPPRESS keeps the one given before."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument("--cache-dir", type=Path, help="cache root (default: $MLCBUILD_CACHE_DIR, else the project's cache/ beside .mlcbuild or .git above the recipe, else ~/.cache/mlcbuild)", **default)
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
        help="ed25519 key signing uploaded entries and provenance ($MLCBUILD_SIGNING_KEY)",
        **default,
    )
    p.add_argument(
        "--link-type",
        metavar="TYPES",
        help="how source files (local model folders, HF cache blobs) enter the cache: the first of "
        "reflink, hardlink, copy that works (default: $MLCBUILD_LINK_TYPE or reflink,hardlink,copy; "
        "hardlink shares the inode with your file: no second copy, and editing it invalidates the cache entry; "
        "files under 16 MiB are copied instead)",
        **default,
    )


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

    from mlcbuild.cli import build_commands, cache_commands, info_commands, mlc_commands, runtime_commands
    from mlcbuild.cli.init_command import add_parser as add_init_parser

    for group in (build_commands, cache_commands, info_commands, runtime_commands, mlc_commands):
        group.add_parsers(subcommand)
    add_init_parser(subcommand)
    return p


def _fast_path_cache(recipes: Sequence[Path]) -> Path | None:
    """The recipes' cache for the stat-only no-op; None when they have no one home (the full
    command then says why)."""
    from mlcbuild.errors import UserError
    from mlcbuild.store import default_cache_dir

    try:
        return default_cache_dir(recipes)
    except UserError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # a log capturing stdout and stderr together reads in order
    args = _parser().parse_args(argv)
    if args.cache_dir is not None:
        os.environ["MLCBUILD_CACHE_DIR"] = str(args.cache_dir)
    if (args.command == "build" and not (args.force or args.check or args.dry_run)) or args.command == "plan":
        from mlcbuild.execute.noop import saved_plan, up_to_date

        cache = _fast_path_cache(args.recipes)
        if cache is not None and args.command == "build" and (line := up_to_date(cache, vars(args))) is not None:
            print(line)
            return 0
        if cache is not None and args.command == "plan" and (text := saved_plan(cache, vars(args))) is not None:
            sys.stdout.write(text)
            return 0
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
