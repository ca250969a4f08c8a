"""Checkout alias (not installed): the dataset writers moved to `dustjax.cli` (make_dataset,
make_clouds, preview, preview_clouds); ``python -m data_gen.make_dataset`` still runs them."""

import dustjax.cli

__path__ = [*dustjax.cli.__path__, *__path__]  # then modules still in data_gen/ (not installed)
