"""Entry point of the ``activedet`` command.

Input and usage errors (:class:`~activedet.errors.ActivedetError`) print one line on stderr and
exit with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from activedet import __version__
from activedet.errors import ActivedetError

#: command-group modules under activedet.cli, each exposing ``register(subparsers)``
GROUPS = ("data", "stage", "predict", "labels", "pipeline", "init_config", "schedule")


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors already; keep its message to one line."""

    def error(self, message: str) -> None:  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="activedet",
        description="Active learning + semi-supervised object detection for driving data.",
    )
    parser.add_argument("--version", action="version", version=f"activedet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for group in GROUPS:
        importlib.import_module(f"activedet.cli.{group}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,  # log to this call's stderr (in-process callers and tests swap it)
    )
    try:
        result = args.func(args)
    except ActivedetError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"activedet: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("activedet: interrupted\n")
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
