"""Checkout alias (not installed): the entry points moved to `dustjax.cli` and the configs to
`dustjax.configs`, so that an installed dustjax has them. ``python -m experiments.train`` still runs
``dustjax/cli/train.py`` and ``experiments.configs.vnet_common`` is ``dustjax/configs/...``."""

import dustjax.cli
import dustjax.configs

# experiments.<entry point> -> dustjax/cli/<entry point>.py; modules still in experiments/ (not
# installed) are found after them.
__path__ = [*dustjax.cli.__path__, *__path__]
configs = dustjax.configs
__import__("sys").modules[__name__ + ".configs"] = dustjax.configs
