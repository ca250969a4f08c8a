"""dustjax maps as `dustmaps` maps, so that code written for `dustmaps` takes them unchanged.

Optional (``pip install 'dustjax[dustmaps]'``)::

    from dustjax.dustmaps_adapter import DustjaxQuery
    query = DustjaxQuery("gp_run/density.fits", integrated=True)  # a dustmaps.map_base.DustMap
    query.query_gal(180.0, 2.0, 0.5, mode="percentile", pct=[16, 50, 84])  # d in kpc

`DustjaxQuery` subclasses `dustmaps.map_base.DustMap`, so it inherits dustmaps' own ``__call__``
(SkyCoord check), ``query_gal(l, b, d=None)`` and ``query_equ(ra, dec, d=None, frame='icrs')``
(degrees, kpc); its ``query(coords, mode, return_flags, pct)`` is `dustjax.maps.DustMap.query`.
As with dustmaps' Edenhofer et al. (2023) map, density or integrated extinction is chosen when
the map is opened (``integrated=``). The default mode is 'median'.
"""

from __future__ import annotations

import os
import warnings

from dustjax.maps import DustMap

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dustmaps warns at import when ~/.dustmapsrc is absent
        from dustmaps.map_base import DustMap as _DustmapsMap
except ImportError as err:
    raise ImportError(
        "dustjax.dustmaps_adapter needs dustmaps: pip install 'dustjax[dustmaps]'"
    ) from err


class DustjaxQuery(_DustmapsMap):
    """A dustjax map (a `DustMap`, or the path of a FITS map) behind dustmaps' interface."""

    def __init__(
        self,
        dustmap: DustMap | str | os.PathLike,
        integrated: bool = False,
        density_scale: float | None = None,
    ):
        super().__init__()
        if not isinstance(dustmap, DustMap):
            dustmap = DustMap.from_fits(dustmap, density_scale=density_scale)
        self.map = dustmap
        self._integrated = bool(integrated)

    def query(self, coords, mode: str = "median", return_flags: bool = False, pct=None, rng=None):
        """Density (mag/pc) or, if opened with ``integrated=True``, extinction (mag); see
        `dustjax.maps.DustMap.query` for the modes and shapes."""
        return self.map.query(
            coords,
            integrated=self._integrated,
            mode=mode,
            pct=pct,
            rng=rng,
            return_flags=return_flags,
        )

    @property
    def integrated(self) -> bool:
        return self._integrated

    @property
    def distances(self):
        """Distances of the profile a query without distances returns (a Quantity)."""
        return self.map.distances

    @property
    def n_samples(self) -> int | None:
        """Posterior samples the map carries, None without (as dustmaps' Edenhofer map)."""
        return self.map.num_samples or None
