r"""Run one of the POLARIS U-Net studies (Ribeiro 2025 part II) as a batch of trainings.

    dustjax-polaris-study --config=polaris_study --study=filters_levels --root=runs/polaris_study
    python -m experiments.polaris_study --config=experiments/configs/polaris_study.py \
        --study=filters_levels --root=runs/polaris_study       # fig. 14: filters x levels
    python -m experiments.polaris_study ... --study=convs_per_block   # fig. 16
    python -m experiments.polaris_study ... --study=train_size        # figs. 22-23
    python -m experiments.polaris_study ... --study=kan               # the KAN variants
    python -m experiments.polaris_study ... --study=kan --draw_only   # table + figure only

Trains every point of the study's grid that is not finished (a finished point is skipped, an
interrupted one resumes from its checkpoint), then writes <root>/<study>/results.json,
results.md and the figure, and prints the table (`dustjax.polaris.studies.run_study`). Several
processes may share a root with --shard=i/n. --deadline_s bounds the whole call: no point starts
after it, and each gets at most what is left as its training budget. Grid values are config keys
(e.g. --config.study.filters_levels.levels="(2,3)"). Needs neither tensorflow nor astropy.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program)."""
    from dustjax.polaris.studies import STUDIES

    config_flags.DEFINE_config_file("config", None, "Study config file.", lock_config=True)
    flags.DEFINE_enum("study", None, list(STUDIES), "Which study to run.")
    flags.DEFINE_string("root", "workdirs/polaris_study", "Root directory of the studies.")
    flags.DEFINE_string("shard", "0/1", "i/n: train every n-th point starting at the i-th.")
    flags.DEFINE_float("deadline_s", 0.0, "Seconds after which no point starts (0: none).")
    flags.DEFINE_bool("draw_only", False, "Only rebuild the table and the figure.")
    flags.DEFINE_bool("prepare_data_only", False, "Only simulate (or load) the crops, then exit.")
    flags.DEFINE_string(
        "seed_from", None, "An earlier run's results.json of this study: its finished points "
        "(same fingerprint) are not trained again.",
    )  # fmt: skip
    flags.mark_flags_as_required(["config"])


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise app.UsageError(f"--shard={text!r}: expected i/n, e.g. 0/2") from None
    if not 0 <= index < count:
        raise app.UsageError(f"--shard={text!r}: need 0 <= i < n")
    return index, count


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dustjax import runtime
    from dustjax.polaris import studies
    from dustjax.training import NonFiniteLossError

    runtime.configure_xla()
    runtime.quiet_library_logs()
    config = FLAGS.config
    if "study" not in config:
        raise app.UsageError("--config has no study block (use experiments/configs/polaris_study*)")
    try:
        if FLAGS.prepare_data_only:
            print(studies.prepare_data(config, FLAGS.root))
            return
        if FLAGS.study is None:
            raise app.UsageError("--study is required")
        if FLAGS.seed_from:
            seeded = studies.seed_results(config, FLAGS.study, FLAGS.root, FLAGS.seed_from)
            print(
                f"from {FLAGS.seed_from}: " + ", ".join(f"{len(v)} {k}" for k, v in seeded.items())
            )
        table = studies.run_study(
            config, FLAGS.study, FLAGS.root, shard=_shard(FLAGS.shard),
            deadline_s=FLAGS.deadline_s, draw_only=FLAGS.draw_only,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, NonFiniteLossError) as err:
        logging.error("%s", err)
        sys.exit(f"error: {err}")
    print("\n" + studies.markdown_table(table))
    for line in studies.summary_lines(table):
        print(line)
    for name, what in table["run"].items():
        print(f"  {name}: {what}")
    print(f"table and figure in {FLAGS.root}/{FLAGS.study} ({table['figure'] or 'no figure yet'})")


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])
