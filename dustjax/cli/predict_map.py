r"""Predict a mean volume density map from an observed column density FITS map (appendix D).

    dustjax-predict-map --fits=taurus_N.fits --model=workdirs/unet \
        --distance_pc=140 [--out=taurus_density.fits] [--predictions_per_pixel=4] \
        [--residual_correction=auto]

Reads the map and its celestial WCS, converts the pixel scale to pc at --distance_pc, resamples
the map to the model's pc per pixel (antialiased when shrinking), cuts it into overlapping tiles
of the training crop size (each interior pixel predicted --predictions_per_pixel times, averaged),
optionally removes the appendix-C residual baseline fitted on the validation set, resamples back
and writes a FITS map of the target density (cm^-3) with the same WCS, plus a PNG. Blank, NaN or
non-positive pixels are masked (NaN in the output), not propagated; a map smaller than one tile
is reflect-padded. A map without a celestial WCS or without a column density unit gets a clear
error (BUNIT "cm-2" or "H2 cm-2"; N(H2) is converted to N_H = 2 N(H2), the simulator's n is
hydrogen nuclei; --bunit overrides a missing or odd BUNIT). The work is
`dustjax.polaris.predict_map.predict_map`.

With a multi-input (column + 13CO) model, pass its 13CO cube too (brightness temperature in K,
velocity axis VRAD/VELO-LSR, on the map's pixels): --ppv=taurus_13co.fits
[--systemic_velocity_kms=6.0] (`dustjax.polaris.predict_emission.predict_map_emission`).
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so that importing this module
    for its library function never collides with the flags of other entry points)."""
    flags.DEFINE_string("fits", None, "Column density map (FITS, 2D, celestial WCS).")
    flags.DEFINE_string("model", None, "Training workdir of a U-Net (config.json, checkpoints/).")
    flags.DEFINE_float("distance_pc", None, "Distance of the cloud in pc (sets pc per pixel).")
    flags.DEFINE_string("out", None, "Output FITS (default <map stem>_density.fits next to it).")
    flags.DEFINE_integer("predictions_per_pixel", 4, "Overlapping predictions per interior pixel.")
    flags.DEFINE_integer("hdu", 0, "HDU index holding the map.")
    flags.DEFINE_string("bunit", None, "Unit of the map if BUNIT is missing: 'cm-2' or 'H2 cm-2'.")
    flags.DEFINE_string(
        "residual_correction",
        "none",
        "'none', 'auto' (<model>/validation/residual_correction.json) or a JSON path.",
    )
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint.")
    flags.DEFINE_integer("batch_size", 16, "Tiles per device call.")
    flags.DEFINE_string("ppv", None, "13CO PPV cube (FITS, K, VRAD) for a column + 13CO model.")
    flags.DEFINE_float("systemic_velocity_kms", None, "Removed from the cube (default: its mean).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dustjax.runtime import configure_xla, quiet_library_logs

    configure_xla()  # before anything starts JAX's backend
    quiet_library_logs()
    for name in ("fits", "model", "distance_pc"):
        if FLAGS[name].value is None:
            raise app.UsageError(f"--{name} is required")
    from dustjax.io import OutputError
    from dustjax.maps import MapError
    from dustjax.polaris.predict_map import predict_map

    try:
        if FLAGS.ppv:
            from dustjax.polaris.predict_emission import predict_map_emission

            summary = predict_map_emission(
                FLAGS.fits, FLAGS.ppv, FLAGS.model, FLAGS.distance_pc, FLAGS.out,
                predictions_per_pixel=FLAGS.predictions_per_pixel, hdu=FLAGS.hdu,
                bunit=FLAGS.bunit, systemic_velocity_kms=FLAGS.systemic_velocity_kms,
                which=FLAGS.which, batch_size=FLAGS.batch_size,
            )  # fmt: skip
        else:
            summary = predict_map(
                FLAGS.fits, FLAGS.model, FLAGS.distance_pc, FLAGS.out,
                predictions_per_pixel=FLAGS.predictions_per_pixel, hdu=FLAGS.hdu,
                bunit=FLAGS.bunit, residual_correction=FLAGS.residual_correction,
                which=FLAGS.which, batch_size=FLAGS.batch_size,
            )  # fmt: skip
    except (MapError, FileNotFoundError, OutputError, ValueError) as err:
        sys.exit(f"error: {err}")
    for key, value in summary.items():
        print(f"{key:>22}: {value}")


if __name__ == "__main__":
    import dustjax.cli

    dustjax.cli.run(sys.modules[__name__])
