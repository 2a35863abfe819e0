"""`python -m gpu_engine.data <command>`: blocks, download, import, synth, record.

Each command lives in its own module, which exposes `add_cli(subparsers)`; that
adds its sub-parser and sets `func(args) -> int`. Unusable input raises
`InputError`: printed as one line on stderr, exit code 2 (`gpu_engine.cli`).

Outputs are safe by default (`gpu_engine.outputs`): `import`, `synth` and `blocks` refuse an
existing `--out` unless `--overwrite` is given, and even then replace only what that command
writes (a book store, a block dataset), never a directory holding stores, a foreign file or
the command's own input; `record` never replaces anything. Every check runs before any work,
a failed run leaves nothing behind, and a killed run's temporary (`.NAME.tmp-PID`) is removed
by the next run once its process is gone.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from gpu_engine.cli import Parser as _Parser
from gpu_engine.cli import run_main

# command modules, in the order they appear in --help
COMMAND_MODULES = (
    "gpu_engine.data.blocks.dataset",
    "gpu_engine.data.download.command",
    "gpu_engine.data.books.importers",
    "gpu_engine.data.synth.generate",
    "gpu_engine.data.books.record",
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m gpu_engine.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # command not built yet
            raise
        add_cli = getattr(module, "add_cli", None)
        if add_cli is not None:
            add_cli(sub)
    return parser


def main(argv=None) -> int:
    return run_main(build_parser(), lambda args: args.func(args), argv)


if __name__ == "__main__":
    sys.exit(main())
