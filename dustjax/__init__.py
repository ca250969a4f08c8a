"""dustjax: 3D interstellar dust maps in JAX/Flax.

Importing the package has no side effects and needs neither tensorflow nor astropy: both are
imported lazily at the I/O boundary, so the GPU path runs on machines that have neither.
"""

__version__ = "0.1.0"
