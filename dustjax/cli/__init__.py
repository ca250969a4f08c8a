"""The command-line entry points: absl programs, each a thin layer of flags over one library call.

Installed as console scripts (``pyproject.toml``'s ``[project.scripts]``, `dustjax.cli.scripts`)::

    dustjax-train --config=vnet_sr            # = python -m dustjax.cli.train
    dustjax-evaluate --workdir=workdirs/vnet_sr
    dustjax-apply --region=SR --catalog=stars.fits --model=workdirs/vnet_sr
    dustjax-fit-gp --config=gp_test
    dustjax-predict-map / dustjax-polaris-validate      (the POLARIS U-Net)
    dustjax-make-dataset / dustjax-make-clouds          (TFRecord datasets: the tfrecord extra)
    dustjax-preview / dustjax-preview-clouds            (figures of one simulated cube or cloud)

Each module keeps its flags in ``define_flags()`` (importing one defines none) and its program in
``main(argv)``; `run` starts it. ``--config`` takes a packaged config's name from any directory
(`dustjax.configs.config_path`), and ``--help`` prints the module's usage and flags and exits 0.
In a checkout, ``python -m experiments.train`` and ``python -m data_gen.make_dataset`` still work
(``experiments/`` and ``data_gen/`` there are aliases of this package, not installed).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

#: console script -> module of dustjax.cli (pyproject.toml's [project.scripts] lists the same).
ENTRY_POINTS = {
    "dustjax-train": "train",
    "dustjax-evaluate": "evaluate",
    "dustjax-apply": "apply",
    "dustjax-fit-gp": "fit_gp",
    "dustjax-predict-map": "predict_map",
    "dustjax-polaris-validate": "polaris_validate",
    "dustjax-make-dataset": "make_dataset",
    "dustjax-make-clouds": "make_clouds",
    "dustjax-preview": "preview",
    "dustjax-preview-clouds": "preview_clouds",
}

_HELP = ("-h", "--help", "-?", "--helpshort", "-help", "-helpshort")
_HELP_FULL = ("--helpfull", "-helpfull")


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config`` value given as a packaged config's name (or the checkout's
    old ``experiments/configs/<name>.py`` spelling) replaced by that file's path."""
    from dustjax.configs import config_path

    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-config") and i + 1 < len(argv):
            out += [arg, config_path(argv[i + 1])]
            i += 2
            continue
        for prefix in ("--config=", "-config="):
            if arg.startswith(prefix):
                arg = prefix + config_path(arg[len(prefix) :])
        out.append(arg)
        i += 1
    return out


def _flags_parser(module_name: str, doc: str | None):
    from absl import app

    def parse(argv):
        if any(a in _HELP for a in argv[1:]):
            print_help(module_name, doc)
            sys.exit(0)
        try:
            argv = resolve_config_args(list(argv))
        except ValueError as err:
            print(f"{Path(argv[0]).name}: error: {err}", file=sys.stderr)
            sys.exit(2)
        from dustjax import runtime

        # dustjax.runtime.parse_flags (where present) reports a bad config key in one line
        parse_flags = getattr(runtime, "parse_flags", app.parse_flags_with_usage)
        try:
            return parse_flags(argv)
        except SystemExit as stop:
            if stop.code == 1 and any(a in _HELP_FULL for a in argv[1:]):
                sys.exit(0)  # absl ends --helpfull with status 1; asking for help is no error
            raise

    return parse


def print_help(module_name: str, doc: str | None) -> None:
    """The module's usage (its docstring) and the flags it defines, on stdout."""
    from absl import flags

    fv = flags.FLAGS
    text = (doc or f"\nUSAGE: {sys.argv[0]} [flags]\n").rstrip() + "\n"
    by_module = fv.flags_by_module_dict()
    names = [module_name, "__main__", sys.argv[0]]
    helps = [fv.module_help(n) for n in dict.fromkeys(names) if n in by_module]
    sys.stdout.write(text)
    helps = [h for h in helps if h.strip()]
    if helps:
        sys.stdout.write("\nflags:\n" + "\n".join(helps) + "\n")
    sys.stdout.write("\nTry --helpfull to get a list of all flags.\n")


def run(module) -> None:
    """Start the entry point `module` (a module object or a name under dustjax.cli): define its
    flags, parse the command line (config names, --help) and call its ``main``."""
    from absl import app

    if isinstance(module, str):
        module = importlib.import_module(
            module if module.startswith("dustjax.") else f"dustjax.cli.{module}"
        )
    if hasattr(module, "define_flags"):
        module.define_flags()
    main_module = sys.modules.get("__main__")
    if main_module is not None and main_module is not module and not main_module.__doc__:
        main_module.__doc__ = module.__doc__  # absl's usage text is __main__'s docstring
    app.run(_guarded(module.main), flags_parser=_flags_parser(module.__name__, module.__doc__))


def _guarded(main):
    """`main`, with a missing optional dependency reported in one line (exit status 1)."""

    def guarded(argv):
        from dustjax.io import MissingExtraError

        try:
            return main(argv)
        except MissingExtraError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    return guarded
