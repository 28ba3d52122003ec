"""Cut a library of real-galaxy source stamps out of the Hubble eXtreme Deep Field.

docs/design.md §11 [R]: Galaxy Zoo and GREAT3 cannot be downloaded here, so the real-galaxy
source family uses galaxies segmented out of scikit-image's
``data.hubble_deep_field()`` (872 x 1000 RGB JPEG, NASA/ESA, public domain),
converted to grayscale by averaging the RGB channels as the paper does for
Galaxy Zoo (docs/design.md §3.2).

Steps:
1. grayscale = mean over RGB, in [0, 1];
2. background subtraction: sigma-clipped (3 sigma) median and rms;
3. segmentation: Gaussian-smoothed map (sigma 1.5 px) thresholded at
   ``--nsigma`` times the smoothed map's clipped rms, then ``scipy.ndimage.label``;
4. selection: resolved (segment area >= ``--min-area`` px), bright (peak
   >= ``--min-snr`` times the rms), not a saturated star (fewer than
   ``--max-saturated`` pixels at the JPEG ceiling), cut-out box inside the
   image, and isolated enough (segments of other objects in the box hold less
   than ``--max-neighbour-flux`` of the galaxy's flux);
5. square cut-out centred on the flux-weighted centroid, side = ``--margin``
   times the larger segment extent (so the galaxy sits well inside the taper
   applied at load time, docs/design.md §3.2 step 3); the cut-out is multiplied by a
   soft support (the galaxy's own segment grown by 3 px and blurred by
   1.5 px) and pixels of other segments are set to 0, so background noise is
   not lensed and no galaxy appears in two stamps;
6. resize to ``STAMP_SIZE`` (bicubic, anti-aliased), clip negatives to 0,
   normalise to peak 1;
7. disjoint train/validation/test pools (70/15/15 by a fixed-seed shuffle).

Outputs (package data, loaded by ``ensai_tf.data.sources.load_stamp_library``):
``ensai_tf/data/resources/hdf_stamps.npz`` (``stamps`` float16
``(N, STAMP_SIZE, STAMP_SIZE)`` untapered and peak 1; ``ids`` int32) and
``source_splits.json`` (split of every id, with its crop box in the HDF image).

Usage:
    python tools/make_source_library.py [--preview contact_sheet.png]
"""

import argparse
import json
import pathlib

import numpy as np
from astropy.stats import sigma_clipped_stats
from scipy import ndimage
from skimage import data as skdata
from skimage import transform

from ensai_tf.data import sources

__all__ = ["find_galaxies", "cut_stamps", "assign_splits", "main"]

RESOURCES = pathlib.Path(sources.__file__).parent / "resources"
SPLIT_FRACTIONS = (("train", 0.70), ("validation", 0.15), ("test", 0.15))


def find_galaxies(image, nsigma=2.5, smooth_pix=1.5, min_area=80, min_snr=15.0,
                  max_saturated=4, margin=2.0, min_side=24, max_neighbour_flux=0.25):
    """Segment the field and select resolved, isolated galaxies.

    Args:
        image: background-subtracted grayscale image, ``(H, W)``, float.
        nsigma: detection threshold on the smoothed map, in units of its rms.
        smooth_pix: Gaussian smoothing before thresholding, pixels.
        min_area: minimum segment area, pixels.
        min_snr: minimum peak / background rms.
        max_saturated: reject segments with more pixels than this at the
            JPEG ceiling (bright stars with diffraction spikes).
        margin: cut-out side / larger segment extent.
        min_side: minimum cut-out side, pixels.
        max_neighbour_flux: maximum flux of other segments inside the box,
            as a fraction of the galaxy's segment flux.

    Returns:
        ``(labels, records)``: the label map and a list of dicts with ``label``,
        ``box`` (row0, row1, col0, col1; half-open, HDF pixels), ``area``,
        ``peak_snr`` and ``neighbour_flux``.
    """
    _, _, rms = sigma_clipped_stats(image, sigma=3.0)
    smooth = ndimage.gaussian_filter(image, smooth_pix)
    _, smooth_median, smooth_rms = sigma_clipped_stats(smooth, sigma=3.0)
    labels, count = ndimage.label(smooth > smooth_median + nsigma * smooth_rms)
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(image), labels, index)
    peaks = ndimage.maximum(image, labels, index)
    fluxes = ndimage.sum_labels(np.clip(image, 0.0, None), labels, index)
    saturated = ndimage.sum_labels(image >= image.max() - 1e-6, labels, index)
    slices = ndimage.find_objects(labels)
    records = []
    for lab, area, peak, flux, sat, sl in zip(index, areas, peaks, fluxes, saturated, slices):
        if area < min_area or peak < min_snr * rms or sat > max_saturated:
            continue
        seg = labels[sl] == lab
        weights = np.clip(image[sl], 0.0, None) * seg
        rows, cols = np.indices(seg.shape)
        row_c = sl[0].start + (weights * rows).sum() / weights.sum()
        col_c = sl[1].start + (weights * cols).sum() / weights.sum()
        extent = max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
        half = int(np.ceil(max(margin * extent, min_side) / 2.0))
        r0, c0 = int(round(row_c)) - half, int(round(col_c)) - half
        box = (r0, r0 + 2 * half, c0, c0 + 2 * half)
        if r0 < 0 or c0 < 0 or box[1] > image.shape[0] or box[3] > image.shape[1]:
            continue
        cut_labels = labels[box[0]:box[1], box[2]:box[3]]
        cut = np.clip(image[box[0]:box[1], box[2]:box[3]], 0.0, None)
        others = (cut_labels > 0) & (cut_labels != lab)
        neighbour = float(cut[others].sum() / flux)
        if neighbour > max_neighbour_flux:
            continue
        records.append({"label": int(lab), "box": [int(b) for b in box], "area": int(area),
                        "peak_snr": round(float(peak / rms), 2),
                        "neighbour_flux": round(neighbour, 4)})
    return labels, records


def cut_stamps(image, labels, records, size):
    """Square cut-outs with neighbours masked, resized and normalised to peak 1.

    Args:
        image: background-subtracted grayscale image, ``(H, W)``.
        labels: segment label map from :func:`find_galaxies`.
        records: selected galaxies from :func:`find_galaxies`.
        size: output stamp side, pixels.

    Returns:
        float32 array ``(N, size, size)``, each with peak 1 and no negatives.
    """
    stamps = []
    for rec in records:
        r0, r1, c0, c1 = rec["box"]
        cut = image[r0:r1, c0:c1].copy()
        lab = labels[r0:r1, c0:c1]
        own = lab == rec["label"]
        # Soft support: the galaxy's segment grown by 3 px, blurred by 1.5 px, so
        # background noise and neighbours outside it fade to exactly 0 smoothly.
        support = ndimage.gaussian_filter(
            ndimage.binary_dilation(own, iterations=3).astype(np.float64), 1.5)
        support[(lab > 0) & ~own] = 0.0
        cut = cut * np.clip(support / max(support.max(), 1e-12), 0.0, 1.0)
        stamp = transform.resize(cut, (size, size), order=3, anti_aliasing=True, mode="reflect")
        stamp = np.clip(stamp, 0.0, None)
        stamps.append((stamp / stamp.max()).astype(np.float32))
    return np.stack(stamps)


def assign_splits(num, seed):
    """Disjoint 70/15/15 train/validation/test assignment by a fixed-seed shuffle.

    Returns:
        list of split names, one per stamp id ``0 .. num - 1``.
    """
    order = np.random.default_rng(seed).permutation(num)
    names = [None] * num
    start = 0
    for i, (name, frac) in enumerate(SPLIT_FRACTIONS):
        stop = num if i == len(SPLIT_FRACTIONS) - 1 else start + int(round(frac * num))
        for k in order[start:stop]:
            names[k] = name
        start = stop
    return names


def _write_preview(stamps, split_names, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 10
    rows = int(np.ceil(len(stamps) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.3))
    for ax in np.ravel(axes):
        ax.axis("off")
    for i, (stamp, name) in enumerate(zip(stamps, split_names)):
        ax = np.ravel(axes)[i]
        # origin="lower": rows = +y drawn upwards (docs/design.md §0).
        ax.imshow(stamp, cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.set_title(f"{i} {name[:3]}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=pathlib.Path, default=RESOURCES)
    parser.add_argument("--size", type=int, default=sources.STAMP_SIZE, help="stamp side, pixels")
    parser.add_argument("--seed", type=int, default=2017, help="split shuffle seed")
    parser.add_argument("--nsigma", type=float, default=2.5)
    parser.add_argument("--min-area", type=int, default=80)
    parser.add_argument("--min-snr", type=float, default=15.0)
    parser.add_argument("--max-saturated", type=int, default=4)
    parser.add_argument("--margin", type=float, default=2.0)
    parser.add_argument("--max-neighbour-flux", type=float, default=0.25)
    parser.add_argument("--preview", type=pathlib.Path, help="write a contact sheet PNG here")
    args = parser.parse_args(argv)

    rgb = skdata.hubble_deep_field().astype(np.float64) / 255.0
    gray = rgb.mean(axis=-1)
    _, median, _ = sigma_clipped_stats(gray, sigma=3.0)
    image = gray - median
    labels, records = find_galaxies(image, nsigma=args.nsigma, min_area=args.min_area,
                                    min_snr=args.min_snr, max_saturated=args.max_saturated,
                                    margin=args.margin,
                                    max_neighbour_flux=args.max_neighbour_flux)
    stamps = cut_stamps(image, labels, records, args.size)
    split_names = assign_splits(len(stamps), args.seed)
    ids = np.arange(len(stamps), dtype=np.int32)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out_dir / sources.LIBRARY_FILE,
                        stamps=stamps.astype(np.float16), ids=ids)
    table = {
        "description": "HDF/XDF galaxy stamps for ensai_tf (docs/design.md §3.2, §11 [R]); made by "
                       "tools/make_source_library.py",
        "image": "skimage.data.hubble_deep_field() (NASA/ESA, public domain), grayscale = RGB "
                 "mean, background = sigma-clipped median",
        "stamp_size": args.size,
        "box_convention": "[row0, row1, col0, col1], half-open, pixels of the 872x1000 HDF image",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "preview")},
        "splits": {name: [int(i) for i in ids if split_names[i] == name]
                   for name, _ in SPLIT_FRACTIONS},
        "stamps": [dict(id=int(i), split=split_names[i], **{k: v for k, v in rec.items()
                                                             if k != "label"})
                   for i, rec in enumerate(records)],
    }
    (args.out_dir / sources.SPLITS_FILE).write_text(json.dumps(table, indent=1) + "\n")
    counts = {name: len(v) for name, v in table["splits"].items()}
    size_kb = (args.out_dir / sources.LIBRARY_FILE).stat().st_size / 1024
    print(f"{len(stamps)} stamps {counts}; {sources.LIBRARY_FILE} {size_kb:.0f} kB")
    if args.preview:
        _write_preview(stamps, split_names, args.preview)
        print(f"contact sheet: {args.preview}")


if __name__ == "__main__":
    main()
