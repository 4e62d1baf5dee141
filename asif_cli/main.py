"""asif-index: training-free multimodal search (ASIF relative vectors) on Qdrant and Milvus.

Every error is one line naming the input and the fix, with exit code 2; -v adds the
traceback. Ctrl-C stops a command and leaves it resumable."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage block only with --help)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


from asif_cli.layout import GROUPS, MOVED
from asif_cli.process import exit_now as _exit_now


class _Both:
    """The parser of a moved command and its hidden old-name alias, configured as one."""

    def __init__(self, new, old, old_name: str, new_name: str) -> None:
        self._new, self._old, self._names = new, old, (old_name, new_name)

    def add_argument(self, *a, **kw):
        self._old.add_argument(*a, **kw)
        return self._new.add_argument(*a, **kw)

    def add_mutually_exclusive_group(self, **kw):
        return _Both(self._new.add_mutually_exclusive_group(**kw),
                     self._old.add_mutually_exclusive_group(**kw), *self._names)

    def set_defaults(self, **kw):
        self._new.set_defaults(**kw)
        if "func" in kw:
            kw["func"] = _deprecated(kw["func"], *self._names)
        self._old.set_defaults(**kw)


def _deprecated(func, old: str, new: str):
    def run(args):
        print(f"asif-index: '{old}' is now 'asif-index {new}'; the old name goes in the next "
              "release", file=sys.stderr)
        return func(args)

    return run


class _Router:
    """``sub`` as the command modules see it: a moved command lands in its group."""

    def __init__(self, sub, formatter) -> None:
        self._sub, self._groups, self._formatter = sub, {}, formatter

    def add_parser(self, name: str, **kw):
        if name not in MOVED:
            return self._sub.add_parser(name, **kw)
        group, new = MOVED[name]
        if group not in self._groups:
            g = self._sub.add_parser(group, help=GROUPS[group], description=GROUPS[group])
            self._groups[group] = g.add_subparsers(dest=f"{group}_cmd", required=True,
                                                   metavar="COMMAND")
        kw.setdefault("formatter_class", self._formatter)
        p_new = self._groups[group].add_parser(new, **kw)
        kw.pop("help", None)  # no help line: the alias is not listed
        p_old = self._sub.add_parser(name, **kw)
        return _Both(p_new, p_old, name, f"{group} {new}")


def build_parser() -> argparse.ArgumentParser:
    from asif_cli import core_commands, db_commands, method_commands
    from asif_cli.examples import add_examples

    ap = _Parser(prog="asif-index", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show third-party warnings and, on an error, the traceback")
    # metavar: the usage line names no command list (the hidden old names stay out of it)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p):
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show third-party warnings and, on an error, the traceback")
        p.add_argument("--config", help="JSON settings file (ASIF_* env vars also apply)")
        p.add_argument("--text-encoder", help="'default' (all-MiniLM-L6-v2) or "
                       "'hf:/path/to/model_dir'")
        p.add_argument("--image-encoder", help="'default' (the EfficientNet-Lite0+Lite1+Lite2 "
                       "ensemble), 'light' (Lite0 alone, 4-6x faster), efficientnet-lite0|1|2, "
                       "'timm:<model>:<weights>', 'hf:/path/to/model_dir' or an ensemble A+B; "
                       "an existing index uses its own unless this is given")
        p.add_argument("--device", help="auto (default), cpu or cuda[:N]")
        p.add_argument("--cache-dir", help="embedding cache directory "
                       "(default ~/.cache/asif-index)")

    routed = _Router(sub, argparse.HelpFormatter)
    db = db_commands.register(routed, common)  # the product verbs first
    core_commands.register(routed, common)  # demo; 'evaluate' goes to eval
    method_commands.register(routed, common, db)
    add_examples(ap)
    return ap


def _quiet(verbose: bool) -> None:
    """Third-party chatter (deprecations, pymilvus's retry and iterator logs) off unless -v."""
    if verbose:
        logging.basicConfig(level=logging.INFO)
        return
    warnings.filterwarnings("ignore")
    # Not per-logger levels: pymilvus re-configures its loggers when it is imported (after
    # this runs), and asif-index itself reports through its summaries, not logging.
    logging.disable(logging.WARNING)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a bad flag (its one line is already printed)
        return int(exc.code or 0)
    verbose = bool(getattr(args, "verbose", False))
    _quiet(verbose)
    from asif_index.errors import AsifError

    args.console = argv is None  # the console script: a long command may leave at once
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("asif-index: interrupted; nothing stored is lost. Re-run the same command to go "
              "on (ingest resumes from its --checkpoint; an anchor update with 'asif-index "
              "anchors status --resume')", file=sys.stderr)
        if argv is None:  # the console script, not a caller in this process
            _exit_now(130)
        return 130
    except (AsifError, OSError) as exc:
        if verbose:
            traceback.print_exc()
        print(f"asif-index: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so, in one line, and how to see more
        if verbose:
            traceback.print_exc()
        print(f"asif-index: internal error: {type(exc).__name__}: {_one_line(exc)[:500]} "
              "(re-run with -v for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
