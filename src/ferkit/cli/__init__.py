"""The ``ferkit`` command line: a thin layer that parses arguments and calls the Python API.

One module per command group: ``predict`` (predict, evaluate), ``train`` (train, calibrate,
export), ``generate`` (synth, gan, mix), ``study``, ``serve`` and ``misc`` (models, demo), with
the argument types they share in ``options``. Each command is one ``add_*`` parser builder and
one ``_cmd_*`` function that calls one typed function of the API and prints what it returns
(the wording lives beside the result, e.g. ``RunResult.text()``). COMMANDS lists them in the
order ``ferkit --help`` shows. User errors (FerkitError) end as one line on stderr and exit
status 1; Ctrl-C exits 130. Nothing else in ferkit imports this package.
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import FerkitError, Interrupted
from ..train.config import MONITORS
from .generate import add_gan, add_mix, add_synth
from .misc import add_demo, add_models
from .predict import add_evaluate, add_predict
from .serve import add_serve
from .study import add_study
from .train import add_calibrate, add_export, add_train, train_config_from_args

MONITOR_CHOICES = tuple(MONITORS)
#: The commands, in the order `ferkit --help` lists them.
COMMANDS = [add_train, add_evaluate, add_calibrate, add_predict, add_models, add_export, add_synth, add_gan,
            add_demo, add_mix, add_study, add_serve]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (plus where to look), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="ferkit", description="Facial expression recognition toolkit.")
    parser.add_argument("--version", action="version", version=f"ferkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def run(argv: list[str] | None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse ``argv`` and run the command; user errors become one line and exit status 1."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    sub = getattr(args, "gan_command", None) or getattr(args, "synth_command", None)   # "gan train", "synth faces"
    return report_errors(lambda: args.func(args), command=f"{args.command} {sub}" if sub else args.command)


def report_errors(fn, prog: str = "ferkit", command: str | None = None) -> int:
    """Run ``fn()``; a user error becomes one line on stderr and exit status 1, Ctrl-C 130 and SIGTERM
    (handled like Ctrl-C while ``fn`` runs) 143; running out of memory and an unexpected exception
    are one line too, the latter naming a crash report with the traceback (ferkit.failures)."""
    import signal

    from .. import failures

    previous = signal.getsignal(signal.SIGTERM)
    failures.handle_sigterm()
    try:
        return fn() or 0
    except FerkitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"{prog}: {failures.interrupt_name()}: {exc}", file=sys.stderr)
        return failures.interrupt_status()
    except KeyboardInterrupt:
        print(f"{prog}: {failures.interrupt_name()}", file=sys.stderr)
        return failures.interrupt_status()
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr = open(os.devnull, "w")
        sys.stdout = open(os.devnull, "w")
        return 141
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, the traceback in a file
        if failures.environment_error(exc):   # a full disk, a read-only folder, too many open files ...
            print(f"{prog}: error: {failures.environment_error(exc)}", file=sys.stderr)
        elif failures.is_out_of_memory(exc):
            print(f"{prog}: error: {failures.out_of_memory_line(exc, command)}", file=sys.stderr)
        else:
            print(failures.crash_line(exc, prog), file=sys.stderr)
        return 1
    finally:
        try:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        except (ValueError, OSError, TypeError):
            pass


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


__all__ = ["COMMANDS", "MONITOR_CHOICES", "OneLineErrorParser", "build_parser", "main", "report_errors",
           "run", "train_config_from_args"]
