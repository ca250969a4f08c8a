"""Entry points that turn the simulators into TFRecord datasets."""
