"""Pure TensorFlow lensing functions; units and frames in every docstring (docs/design.md §2-§4).

Modules: :mod:`geometry` (frames, ellipticity to (q, phi)), :mod:`sie`
(deflection, convergence), :mod:`shear` (external shear), :mod:`caustics`
(critical curve, caustic, cut, polygon tests), :mod:`raytrace` (grids, lens
equation, source sampling), :mod:`light` (Sersic profiles).
"""

from ensai_tf.lensing.caustics import (cut_curve, points_in_polygons, polygon_area,
                                       polygon_centroid, tangential_caustic,
                                       tangential_critical_curve)
from ensai_tf.lensing.geometry import ellipticity_to_q_phi, from_lens_frame, to_lens_frame
from ensai_tf.lensing.raytrace import (block_average, crop_center, extended_grid,
                                       lens_equation, sample_source_image)
from ensai_tf.lensing.shear import shear_components, shear_deflection
from ensai_tf.lensing.sie import sie_convergence, sie_deflection

__all__ = [
    "to_lens_frame", "from_lens_frame", "ellipticity_to_q_phi",
    "sie_deflection", "sie_convergence", "shear_components", "shear_deflection",
    "tangential_critical_curve", "tangential_caustic", "cut_curve", "polygon_centroid",
    "polygon_area", "points_in_polygons", "extended_grid", "lens_equation",
    "sample_source_image", "block_average", "crop_center",
]
