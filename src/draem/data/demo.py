"""Built-in demo data: synthetic surfaces with exactly masked defects, in the MVTec AD layout.

Everything is rendered with numpy (float32) from a seed; nothing is downloaded. Geometry is in
reference units (the image is 128 units wide whatever its pixel size), so a bigger image shows
the same surface at a finer resolution.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from draem.errors import DraemError

DEMO_KINDS: tuple[str, ...] = ("fabric", "metal", "wood", "terrazzo")
DEMO_DEFAULT_KINDS: tuple[str, ...] = ("fabric",)  # what `draem demo` trains unless told otherwise
DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "fabric": ("hole", "stain", "missing_thread", "contamination"),
    "metal": ("scratch", "pit", "stain", "contamination"),
    "wood": ("crack", "scratch", "hole", "stain"),
    "terrazzo": ("crack", "hole", "stain", "contamination"),
}
DEFECT_AREA_RANGE: tuple[float, float] = (0.003, 0.08)
MIN_IMAGE_SIZE = 32

_REFERENCE_SIZE = 128.0
_MAX_ATTEMPTS = 40
_GENERATOR_TAG = "draem demo generator v3"
_README_TITLE = "DRAEM demo dataset"
_F32 = np.float32

FloatImage = np.ndarray
Footprint = tuple[FloatImage, np.ndarray]


@dataclass(frozen=True)
class DemoSample:
    """A rendered image, the same surface without its defect (uint8 H x W x 3) and the bool mask."""

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class _Grid:
    """Pixel-centre coordinates in reference units, centred on the image; `axis` is one row."""

    y: np.ndarray
    x: np.ndarray
    axis: np.ndarray
    unit: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.y.shape


@dataclass(frozen=True)
class _Look:
    """Per-image lighting (H x W), colour tint (3,) and sensor noise (H x W x 3)."""

    light: np.ndarray
    tint: np.ndarray
    noise: np.ndarray

    def finish(self, albedo: FloatImage) -> FloatImage:
        return np.clip(albedo * self.light[..., None] * self.tint + self.noise, 0.0, 1.0)


@dataclass(frozen=True)
class _Surface:
    """A surface's albedo, its main direction, and (fabric only) a missing-thread renderer."""

    albedo: FloatImage
    angle: float
    missing_thread: Callable[[np.random.Generator], Footprint] | None = None


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _rgb(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=_F32)


def _colour(values: Sequence[float], rng: np.random.Generator, spread: float) -> np.ndarray:
    """An RGB colour jittered per channel by a relative `spread`."""
    return _rgb(values) * (1 + rng.normal(0, spread, 3)).astype(_F32)


def _make_grid(size: int) -> _Grid:
    unit = _REFERENCE_SIZE / size
    axis = ((np.arange(size) + 0.5 - size / 2) * unit).astype(_F32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return _Grid(y, x, axis, unit)


def _rotate(grid: _Grid, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u along the direction `angle`, v across it)."""
    c, s = float(np.cos(angle)), float(np.sin(angle))
    return grid.x * c + grid.y * s, grid.y * c - grid.x * s


def _polar(grid: _Grid, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dy, dx = grid.y - float(centre[0]), grid.x - float(centre[1])
    return np.hypot(dy, dx), np.arctan2(dy, dx)


_LATTICE_SPREAD = {1: 2 / 3, 2: 0.55}


def _lattice_noise(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray,
                   shape: tuple[int, int], order: int) -> np.ndarray:
    """Random field of unit spread: a Gaussian lattice of `shape` read by wrapping B-splines."""
    lattice = rng.standard_normal(shape)
    field = ndimage.map_coordinates(lattice, [rows, cols], order=order, mode="grid-wrap",
                                    prefilter=False, output=_F32)
    return field / _LATTICE_SPREAD[order]


def _bspline_taps(coords: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice indices and weights (4, len(coords)) of a cubic B-spline over `count` wrapping
    points."""
    base = np.floor(coords)
    t = coords - base
    weights = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1,
                        t**3]) / 6
    indices = (base.astype(np.int64) + np.arange(-1, 3)[:, None]) % count
    return indices, weights


def _smooth_noise(rng: np.random.Generator, grid: _Grid, cell: float) -> np.ndarray:
    """Isotropic smooth noise of unit spread with features about `cell` reference units across."""
    cells = int(np.ceil(_REFERENCE_SIZE / cell)) + 4
    offset_y, offset_x = _uniform(rng, 0, cells), _uniform(rng, 0, cells)
    lattice = rng.standard_normal((cells, cells), dtype=_F32)
    rows, row_weights = _bspline_taps(grid.axis / cell + offset_y, cells)
    cols, col_weights = _bspline_taps(grid.axis / cell + offset_x, cells)
    across_rows = sum(w[:, None] * lattice[i] for i, w in zip(rows, row_weights, strict=True))
    field = sum(across_rows[:, i] * w for i, w in zip(cols, col_weights, strict=True))
    spread = float(np.sqrt((row_weights**2).sum(0).mean() * (col_weights**2).sum(0).mean()))
    return field / spread


def _streaks(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, across: float,
             along: float, order: int = 1) -> np.ndarray:
    """Noise stretched along u: features `across` units wide and `along` units long."""
    rows = int(np.ceil(_REFERENCE_SIZE * 1.5 / across)) + 4
    cols = int(np.ceil(_REFERENCE_SIZE * 1.5 / along)) + 4
    return _lattice_noise(rng, v / across + rows / 2, u / along + cols / 2, (rows, cols), order)


def _smoothstep(low: float, high: float, t: np.ndarray) -> np.ndarray:
    s = np.clip((t - low) / (high - low), 0.0, 1.0)
    return s * s * (3 - 2 * s)


def _edge(signed_distance: np.ndarray, unit: float) -> np.ndarray:
    """Anti-aliased coverage of a shape from a distance that is positive inside it."""
    return np.clip(signed_distance / unit + 0.5, 0.0, 1.0)


def _axis_angle(rng: np.random.Generator, skew: float) -> float:
    """Mostly horizontal or vertical, slightly skewed: how sheet goods are photographed."""
    return float(rng.choice([0.0, np.pi / 2]) + rng.normal(0.0, skew))


def _draw_look(rng: np.random.Generator, grid: _Grid) -> _Look:
    """Brightness, a lighting ramp and soft spot, a colour cast and sensor noise."""
    direction = _uniform(rng, 0, 2 * np.pi)
    ramp = grid.x * float(np.cos(direction)) + grid.y * float(np.sin(direction))
    centre_y, centre_x, width = _uniform(rng, -50, 50), _uniform(rng, -50, 50), _uniform(rng, 30, 70)
    spot = np.exp(((grid.y - centre_y) ** 2 + (grid.x - centre_x) ** 2) / (-2 * width**2))
    light = _uniform(rng, 0.82, 1.12) * (1 + _uniform(rng, 0, 0.35) / _REFERENCE_SIZE * ramp
                                         + _uniform(rng, 0, 0.15) * spot)
    tint = _colour((1.0, 1.0, 1.0), rng, 0.01)
    sigma = _uniform(rng, 0.006, 0.016)
    noise = sigma * (rng.standard_normal((*grid.shape, 1), dtype=_F32)
                     + 0.4 * rng.standard_normal((*grid.shape, 3), dtype=_F32))
    return _Look(light, tint, noise)


_FABRIC_COLOURS = (
    ((0.16, 0.25, 0.45), (0.80, 0.80, 0.76)),
    ((0.78, 0.70, 0.56), (0.74, 0.66, 0.52)),
    ((0.55, 0.56, 0.58), (0.50, 0.51, 0.53)),
    ((0.42, 0.45, 0.30), (0.48, 0.50, 0.35)),
    ((0.62, 0.22, 0.20), (0.58, 0.20, 0.19)),
)


def _fabric(rng: np.random.Generator, grid: _Grid, product: int) -> _Surface:
    """Plain weave: warp and weft threads alternate over and under, with slubs and fibres."""
    angle = _axis_angle(rng, 0.06)
    period = float(np.random.default_rng(product).uniform(4.5, 7.5)) * _uniform(rng, 0.93, 1.07)
    u, v = _rotate(grid, angle)
    u = u + 0.7 * _smooth_noise(rng, grid, 30)
    v = v + 0.7 * _smooth_noise(rng, grid, 30)
    tu, tv = u / period, v / period
    floor_u, floor_v = np.floor(tu), np.floor(tv)
    fu, fv = tu - floor_u, tv - floor_v
    iu, iv = floor_u.astype(np.int64), floor_v.astype(np.int64)
    warp_over = (iu + iv) % 2 == 0
    palette = _FABRIC_COLOURS[product % len(_FABRIC_COLOURS)]
    warp_col, weft_col = _colour(palette[0], rng, 0.015), _colour(palette[1], rng, 0.015)
    slubs = rng.normal(0, 0.06, (2, 64)).astype(_F32)
    warp_shade = 1 + slubs[0][iv % 64] + 0.14 * _streaks(rng, u, v, period / 4, 3.0)
    weft_shade = 1 + slubs[1][iu % 64] + 0.14 * _streaks(rng, v, u, period / 4, 3.0)

    def cross(f: np.ndarray) -> np.ndarray:
        return np.sin(np.pi * f) ** 0.7

    def arch(f: np.ndarray) -> np.ndarray:
        return 0.6 + 0.4 * np.sin(np.pi * f)

    def thread(colour: np.ndarray, height: np.ndarray, shade: np.ndarray) -> FloatImage:
        return colour * ((0.3 + 0.7 * height) * shade)[..., None]

    warp = thread(warp_col, cross(fv) * arch(fu), warp_shade)
    weft = thread(weft_col, cross(fu) * arch(fv), weft_shade)
    albedo = np.where(warp_over[..., None], warp, weft)

    def missing_thread(defect_rng: np.random.Generator) -> Footprint:
        """A stretch of one thread gone: a gap where the crossing threads sag into shadow."""
        along_warp = bool(defect_rng.random() < 0.5)
        lane, along = (iv, u) if along_warp else (iu, v)
        centre_y, centre_x = _uniform(defect_rng, -40, 40), _uniform(defect_rng, -40, 40)
        pick = np.argmin((grid.y - centre_y) ** 2 + (grid.x - centre_x) ** 2)
        start = float(along.flat[pick]) - _uniform(defect_rng, 10, 40)
        stop = float(along.flat[pick]) + _uniform(defect_rng, 10, 40)
        ragged = 2.0 * np.abs(_smooth_noise(defect_rng, grid, 2.0))
        footprint = (lane == lane.flat[pick]) & (along > start - ragged) & (along < stop + ragged)
        if along_warp:
            under = thread(weft_col * 0.6, 0.5 * cross(fu), weft_shade)
        else:
            under = thread(warp_col * 0.6, 0.5 * cross(fv), warp_shade)
        return under, footprint.astype(_F32)

    return _Surface(albedo, angle, missing_thread)


_METAL_COLOURS = (
    (0.62, 0.64, 0.66), (0.70, 0.71, 0.73), (0.46, 0.48, 0.51), (0.72, 0.62, 0.42),
    (0.57, 0.57, 0.58),
)


def _metal(rng: np.random.Generator, grid: _Grid, product: int) -> _Surface:
    """Brushed metal: fine streaks along the brushing direction and a broad sheen."""
    angle = _axis_angle(rng, 0.05)
    u, v = _rotate(grid, angle)
    scale = _uniform(rng, 0.7, 1.4)
    fine = _streaks(rng, u, v, max(scale, grid.unit), 40 * scale)
    medium = _streaks(rng, u, v, 3.0 * scale, 90 * scale)
    centre, width = _uniform(rng, -50, 50), _uniform(rng, 15, 45)
    sheen = np.exp(-(((v - centre) / width) ** 2))
    base = _colour(_METAL_COLOURS[product % len(_METAL_COLOURS)], rng, 0.01)
    shade = (1 + 0.07 * fine + 0.05 * medium + _uniform(rng, 0.05, 0.18) * sheen
             + 0.04 * _smooth_noise(rng, grid, 50))
    return _Surface(base * shade[..., None], angle)


_WOOD_COLOURS = (
    ((0.86, 0.68, 0.46), (0.66, 0.45, 0.27)),
    ((0.76, 0.60, 0.42), (0.55, 0.40, 0.25)),
    ((0.48, 0.33, 0.22), (0.30, 0.19, 0.12)),
    ((0.62, 0.41, 0.28), (0.45, 0.27, 0.17)),
    ((0.84, 0.74, 0.60), (0.66, 0.52, 0.38)),
)


def _wood(rng: np.random.Generator, grid: _Grid, product: int) -> _Surface:
    """Flat-sawn wood: growth rings (light earlywood, dark latewood), fibres and pores."""
    angle = _axis_angle(rng, 0.08)
    u, v = _rotate(grid, angle)
    period = float(np.random.default_rng(product).uniform(8, 16)) * _uniform(rng, 0.87, 1.15)
    bow = float(rng.uniform(-1, 1) ** 3 * 0.003) * (u - _uniform(rng, -60, 60)) ** 2
    rings = v + bow + _uniform(rng, 2, 5.5) * _streaks(rng, u, v, 50, 90, order=2)
    phase = rings / period + 0.2 * _streaks(rng, u, rings, period * 2, 150, order=2)
    f = phase - np.floor(phase)
    late = _smoothstep(0.45, 0.85, f) * (1 - _smoothstep(0.9, 1.0, f))
    fibres = _streaks(rng, u, rings, 1.2, 20)
    pores = np.clip(_streaks(rng, u, rings, 0.8, _uniform(rng, 3, 6)) - 2.0, 0, None)
    light_col, dark_col = _WOOD_COLOURS[product % len(_WOOD_COLOURS)]
    tone = rng.normal(0, 0.01, 3)
    mix = (_uniform(rng, 0.75, 1.0) * late)[..., None]
    albedo = (_rgb(light_col) * (1 - mix) + _rgb(dark_col) * mix) * (1 + tone.astype(_F32))
    shade = 1 + 0.035 * fibres - 0.2 * pores + 0.05 * _smooth_noise(rng, grid, 40)
    return _Surface(albedo * shade[..., None], angle)


_BINDER_COLOURS = ((0.78, 0.77, 0.74), (0.83, 0.78, 0.70), (0.40, 0.40, 0.41), (0.68, 0.67, 0.64))
_CHIP_COLOURS = (
    (0.95, 0.94, 0.91), (0.12, 0.12, 0.13), (0.68, 0.30, 0.20), (0.55, 0.56, 0.56),
    (0.30, 0.45, 0.35), (0.80, 0.62, 0.35), (0.70, 0.68, 0.62), (0.40, 0.30, 0.25),
)


def _worley(rng: np.random.Generator, grid: _Grid, cell: float) -> tuple[np.ndarray, ...]:
    """Cellular noise over seeds jittered on a grid of `cell` units: the distances to the nearest
    and second-nearest seed, and the nearest seed's number."""
    count = int(np.ceil(_REFERENCE_SIZE / cell)) + 3
    origin = -_REFERENCE_SIZE / 2 - cell
    jitter = rng.random((2, count, count), dtype=_F32)
    seed_y = origin + (np.arange(count, dtype=_F32)[:, None] + jitter[0]) * cell
    seed_x = origin + (np.arange(count, dtype=_F32)[None, :] + jitter[1]) * cell
    home = np.clip(((grid.axis - origin) // cell).astype(np.int64), 1, count - 2)
    nearest = np.full(grid.shape, np.inf, dtype=_F32)
    second = nearest.copy()
    number = np.zeros(grid.shape, dtype=np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            rows, cols = np.ix_(home + dy, home + dx)
            squared = ((grid.axis[:, None] - seed_y[rows, cols]) ** 2
                       + (grid.axis - seed_x[rows, cols]) ** 2)
            closer = squared < nearest
            second = np.where(closer, nearest, np.minimum(second, squared))
            number = np.where(closer, rows * count + cols, number)
            nearest = np.where(closer, squared, nearest)
    return np.sqrt(nearest), np.sqrt(second), number


def _terrazzo(rng: np.random.Generator, grid: _Grid, product: int) -> _Surface:
    """Terrazzo: angular stone chips of a few colours, large and small, set in a fine binder."""
    binder = _colour(_BINDER_COLOURS[product % len(_BINDER_COLOURS)], rng, 0.01)
    albedo = binder * (1 + 0.06 * _smooth_noise(rng, grid, 1.5))[..., None]
    palette = np.asarray(_CHIP_COLOURS, dtype=_F32)
    palette = palette[np.random.default_rng(product).choice(len(_CHIP_COLOURS), 4, replace=False)]
    mottle = 1 + 0.06 * _smooth_noise(rng, grid, 1.5)
    density = _uniform(rng, 0.8, 1.25)
    for cell, fill in ((_uniform(rng, 13, 20) / density, 0.85),
                       (_uniform(rng, 4, 7) / density, 0.6)):
        nearest, second, number = _worley(rng, grid, cell)
        count = int(number.max()) + 1
        gap = (rng.uniform(0.08, 0.3, count) * cell).astype(_F32)
        present = rng.random(count) < fill
        coverage = _edge((second - nearest) / 2 - gap[number], grid.unit) * present[number]
        brightness = rng.uniform(0.85, 1.1, (count, 1)).astype(_F32)
        colours = palette[rng.integers(len(palette), size=count)] * brightness
        chip = colours[number] * mottle[..., None]
        albedo = albedo + (chip - albedo) * coverage[..., None]
    return _Surface(albedo, 0.0)


_SURFACES: dict[str, Callable[[np.random.Generator, _Grid, int], _Surface]] = {
    "fabric": _fabric, "metal": _metal, "wood": _wood, "terrazzo": _terrazzo,
}


def _random_point(rng: np.random.Generator, margin: float) -> np.ndarray:
    limit = _REFERENCE_SIZE / 2 - margin
    return rng.uniform(-limit, limit, 2)


def _path(start: np.ndarray, headings: np.ndarray, step: float) -> np.ndarray:
    """Points (n + 1, 2) in (y, x) reached by walking `step` along each heading in turn."""
    moves = step * np.column_stack([np.sin(headings), np.cos(headings)])
    return start + np.vstack([np.zeros((1, 2)), np.cumsum(moves, axis=0)])


def _smooth_curve(rng: np.random.Generator, length: float, bend: float) -> np.ndarray:
    """A gently curving path of about `length` units centred on a random point."""
    step = 0.3
    count = max(int(length / step), 4)
    turns = ndimage.gaussian_filter1d(rng.normal(0, 1, count), count / 6, mode="nearest")
    turns = turns / (np.abs(turns).max() + 1e-9) * bend
    points = _path(np.zeros(2), rng.uniform(0, 2 * np.pi) + turns, step)
    return points - points[count // 2] + _random_point(rng, length / 3)


def _jagged_path(rng: np.random.Generator, start: np.ndarray, heading: float, length: float,
                 jitter: float) -> np.ndarray:
    """A crack-like path: short straight segments at jittered angles around a drifting heading."""
    segment = _uniform(rng, 1.5, 3.0)
    count = max(int(length / segment), 2)
    drift = np.cumsum(rng.normal(0, jitter / 4, count))
    corners = _path(start, heading + drift + rng.normal(0, jitter, count), segment)
    fine = np.linspace(0, 1, int(segment / 0.3) + 1)[:-1]
    pieces = [a + fine[:, None] * (b - a) for a, b in itertools.pairwise(corners)]
    return np.vstack([*pieces, corners[-1:]])


def _stroke(grid: _Grid, points: np.ndarray, half_width: np.ndarray) -> tuple[np.ndarray, ...]:
    """Coverage of a stroke of per-point half widths (at least 0.6 pixel), and the index of the
    nearest point."""
    half_width = np.maximum(half_width, 0.6 * grid.unit)
    pixels = np.column_stack([grid.y.ravel(), grid.x.ravel()])
    reach = float(half_width.max()) + 2 * grid.unit
    distance, index = cKDTree(points).query(pixels, distance_upper_bound=reach)
    index = np.minimum(index, len(points) - 1).reshape(grid.shape)
    distance = distance.reshape(grid.shape)
    coverage = np.where(np.isfinite(distance), _edge(half_width[index] - distance, grid.unit), 0)
    return coverage.astype(_F32), index


def _blob_radius(rng: np.random.Generator, angle: np.ndarray, roughness: float) -> np.ndarray:
    """Relative radius (about 1) of an irregular blob in each direction."""
    radius = np.ones_like(angle)
    for k in range(2, 7):
        amplitude, phase = _uniform(rng, 0, roughness / k**0.5), _uniform(rng, 0, 2 * np.pi)
        radius = radius + amplitude * np.cos(k * angle + phase)
    return radius


def _scratch(rng: np.random.Generator, clean: FloatImage, grid: _Grid, surface: _Surface,
             look: _Look, kind: str) -> Footprint:
    """A thin curved stroke, bright (polished) or dark on metal, pale raw wood on wood."""
    length = _uniform(rng, 30, 75)
    points = _smooth_curve(rng, length, _uniform(rng, 0.1, 0.6))
    taper = np.sin(np.pi * np.linspace(0, 1, len(points))) ** 0.3
    half_width = _uniform(rng, 0.6, 1.1) * taper + 0.2
    coverage, index = _stroke(grid, points, half_width)
    strength = np.clip(0.75 + 0.5 * ndimage.gaussian_filter1d(rng.normal(0, 1, len(points)), 20),
                       0.35, 1.0).astype(_F32)
    alpha = coverage * strength[index]
    if kind == "wood" and float(clean.mean()) < 0.55:
        target = clean * 0.5 + 0.5 * _rgb((0.93, 0.84, 0.70)) * look.light[..., None]
    elif rng.random() < 0.65 and float(clean.mean()) < 0.7:
        target = clean + (1 - clean) * 0.7
    else:
        target = clean * 0.35
    return target, alpha


def _crack(rng: np.random.Generator, clean: FloatImage, grid: _Grid, surface: _Surface,
           look: _Look, kind: str) -> Footprint:
    """A dark, branching, jagged path; in wood it runs along the grain."""
    if kind == "wood":
        heading = surface.angle + float(rng.choice([0.0, np.pi]) + rng.normal(0, 0.08))
    else:
        heading = _uniform(rng, 0, 2 * np.pi)
    length = _uniform(rng, 30, 70)
    start = _random_point(rng, 20) - length / 2 * np.array([np.sin(heading), np.cos(heading)])
    jitter = 0.25 if kind == "wood" else 0.5
    main = _jagged_path(rng, start, heading, length, jitter)
    widths = [_uniform(rng, 0.5, 1.0) * (0.3 + 0.7 * np.sin(np.pi * np.linspace(0, 1, len(main))))]
    paths = [main]
    for _ in range(rng.integers(0, 3 if kind == "wood" else 4)):
        fork = main[rng.integers(len(main) // 5, 4 * len(main) // 5)]
        turn = float(rng.choice([-1, 1]) * rng.uniform(0.4, 1.1))
        branch = _jagged_path(rng, fork, heading + turn, _uniform(rng, 6, 22), jitter)
        widths.append(widths[0].max() * 0.7 * np.linspace(1, 0.2, len(branch)))
        paths.append(branch)
    coverage, _ = _stroke(grid, np.vstack(paths), np.concatenate(widths) + 0.15)
    return clean * _uniform(rng, 0.12, 0.3), coverage


def _hole(rng: np.random.Generator, clean: FloatImage, grid: _Grid, surface: _Surface,
          look: _Look, kind: str) -> Footprint:
    """A small dark cavity, shaded on one side, with a lighter raised or frayed rim."""
    low, high = {"metal": (2.5, 4.5), "fabric": (3.5, 7.5)}.get(kind, (3.0, 7.0))
    radius = _uniform(rng, low, high)
    distance, angle = _polar(grid, _random_point(rng, radius + 6))
    inner = radius * _blob_radius(rng, angle, 0.35 if kind == "fabric" else 0.15)
    rim = _uniform(rng, 0.8, 1.8) * (1 + 0.6 * _smooth_noise(rng, grid, 1.5).clip(-0.8, 0.8))
    inside = _edge(inner - distance, grid.unit)[..., None]
    coverage = _edge(inner + rim - distance, grid.unit)
    light_dir = _uniform(rng, 0, 2 * np.pi)
    slope = (np.cos(angle - light_dir) * np.clip(distance / radius, 0, 1))[..., None]
    depth = _rgb((0.06, 0.05, 0.05)) + clean * (0.18 + 0.1 * slope)
    lip = clean * 0.75 + 0.28
    return depth * inside + lip * (1 - inside), coverage


_STAIN_COLOURS = {
    "fabric": ((0.72, 0.58, 0.40), (0.55, 0.52, 0.50), (0.80, 0.74, 0.50)),
    "metal": ((0.80, 0.50, 0.30), (0.55, 0.52, 0.48), (0.75, 0.62, 0.55)),
    "wood": ((0.55, 0.50, 0.48), (0.62, 0.48, 0.36), (0.45, 0.42, 0.40)),
    "terrazzo": ((0.75, 0.55, 0.35), (0.55, 0.55, 0.55), (0.70, 0.66, 0.50)),
}


def _stain(rng: np.random.Generator, clean: FloatImage, grid: _Grid, surface: _Surface,
           look: _Look, kind: str) -> Footprint:
    """A soft-edged colour shift (oil, rust, water) with a slightly darker tide line."""
    radius = _uniform(rng, 6, 16)
    distance, angle = _polar(grid, _random_point(rng, radius + 4))
    depth = (radius * _blob_radius(rng, angle, 0.3) - distance
             + 2.0 * _smooth_noise(rng, grid, radius / 2))
    body = np.clip(depth / (0.5 * radius), 0, 1)
    tide = _uniform(rng, 0, 0.5) * np.exp(np.clip(depth, 0, None) / -1.2)
    strength = _uniform(rng, 0.65, 0.95)
    alpha = np.where(depth > 0, strength * np.clip(0.35 + 0.65 * body + tide, 0, 1), 0)
    colours = _STAIN_COLOURS[kind]
    tint = _rgb(colours[rng.integers(len(colours))]) * _uniform(rng, 0.5, 0.8)
    return clean * tint, alpha.astype(_F32)


_PARTICLE_COLOURS = (
    (0.08, 0.07, 0.06), (0.55, 0.26, 0.10), (0.95, 0.95, 0.92), (0.15, 0.30, 0.70),
    (0.20, 0.50, 0.20), (0.85, 0.75, 0.15),
)


def _contamination(rng: np.random.Generator, clean: FloatImage, grid: _Grid, surface: _Surface,
                   look: _Look, kind: str) -> Footprint:
    """Foreign matter lying on the surface: a stray fibre, or a cluster of small particles."""
    colour = _rgb(_PARTICLE_COLOURS[rng.integers(len(_PARTICLE_COLOURS))])
    shade = np.ones(grid.shape, dtype=_F32)
    if kind == "fabric" or rng.random() < 0.25:
        points = _smooth_curve(rng, _uniform(rng, 35, 80), _uniform(rng, 1.5, 4.0))
        coverage, _ = _stroke(grid, points, np.full(len(points), _uniform(rng, 0.55, 0.9)))
    else:
        centre = _random_point(rng, 12)
        coverage = np.zeros(grid.shape, dtype=_F32)
        light_dir = _uniform(rng, 0, 2 * np.pi)
        for _ in range(rng.integers(2, 8)):
            radius = _uniform(rng, 1.2, 3.2)
            distance, angle = _polar(grid, centre + rng.normal(0, 5, 2))
            grain = _edge(radius * _blob_radius(rng, angle, 0.3) - distance, grid.unit)
            dome = 1 + 0.3 * np.cos(angle - light_dir) * np.clip(distance / radius, 0, 1)
            shade = np.where(grain > coverage, dome, shade)
            coverage = np.maximum(coverage, grain)
    return colour * (look.light * shade)[..., None] + look.noise, coverage


def _missing_thread(rng: np.random.Generator, clean: FloatImage, grid: _Grid, surface: _Surface,
                    look: _Look, kind: str) -> Footprint:
    if surface.missing_thread is None:
        raise ValueError(f"{kind} has no threads to remove")
    albedo, footprint = surface.missing_thread(rng)
    return look.finish(albedo), footprint


_DEFECTS: dict[str, Callable[..., Footprint]] = {
    "scratch": _scratch, "crack": _crack, "hole": _hole, "pit": _hole, "stain": _stain,
    "contamination": _contamination, "missing_thread": _missing_thread,
}


def _to_uint8(image: FloatImage) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_sample(kind: str, defect: str | None, rng: np.random.Generator,
                  image_size: int = 128, product: int = 0) -> DemoSample:
    """Render one surface of `kind` with `defect` (None for a good one); pure, draws only from rng.

    `product` picks the colours, as one production line makes one product; lighting, orientation,
    scale and pattern vary per image. The mask is exactly the pixels that differ from the clean render.
    """
    if kind not in DEFECT_TYPES:
        raise ValueError(f"unknown surface kind {kind!r}; expected one of {DEMO_KINDS}")
    if defect is not None and defect not in DEFECT_TYPES[kind]:
        raise ValueError(f"unknown defect {defect!r} for {kind}; expected {DEFECT_TYPES[kind]}")
    grid = _make_grid(image_size)
    surface = _SURFACES[kind](rng, grid, product)
    look = _draw_look(rng, grid)
    clean_float = look.finish(surface.albedo)
    clean = _to_uint8(clean_float)
    if defect is None:
        return DemoSample(clean, clean, np.zeros(grid.shape, dtype=bool))
    low, high = DEFECT_AREA_RANGE
    for _ in range(_MAX_ATTEMPTS):
        target, alpha = _DEFECTS[defect](rng, clean_float, grid, surface, look, kind)
        blend = clean_float + (target - clean_float) * alpha[..., None]
        image = np.where((alpha > 0)[..., None], _to_uint8(blend), clean)
        mask = np.any(image != clean, axis=-1)
        if low <= mask.mean() <= high:
            return DemoSample(image, clean, mask)
    raise RuntimeError(f"could not place a {defect} on {kind} within the area bounds")


def _product(seed: int, kind: str) -> int:
    """The product (colour scheme) of one kind in the dataset made with `seed`."""
    return int(np.random.default_rng([seed, DEMO_KINDS.index(kind)]).integers(1 << 16))


def _sample_rng(seed: int, kind: str, split: int, index: int) -> np.random.Generator:
    """An independent stream per image, so subsets and counts never shift other images."""
    return np.random.default_rng([seed, DEMO_KINDS.index(kind), split, index])


def _readme(seed: int, kinds: Sequence[str], image_size: int, train: int, test_good: int,
            per_defect: int) -> str:
    defects = "\n".join(f"  {kind}: {', '.join(DEFECT_TYPES[kind])}" for kind in kinds)
    return (
        f"{_README_TITLE}\n\n"
        "Synthetic surfaces with hand-modelled defects, rendered by draem.data.demo (nothing\n"
        "downloaded). Layout follows MVTec AD: <kind>/train/good, <kind>/test/good,\n"
        "<kind>/test/<defect>, <kind>/ground_truth/<defect>/<name>_mask.png (0 = normal, 255 =\n"
        "defect; a mask marks exactly the pixels the defect changed).\n\n"
        f"defect types:\n{defects}\n\n"
        f"seed: {seed}\n"
        f"parameters: kinds={','.join(kinds)} image_size={image_size} train_per_kind={train} "
        f"test_good_per_kind={test_good} test_defects_per_type={per_defect}\n"
        f"generator: {_GENERATOR_TAG}\n"
    )


def _readme_seed(folder: Path) -> int | None:
    """The seed a demo dataset in `folder` was made with, or None if it is not one."""
    readme = folder / "README.txt"
    if not readme.is_file():
        return None
    lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or lines[0] != _README_TITLE:
        return None
    for line in lines:
        if line.startswith("seed: ") and line[6:].strip().lstrip("-").isdigit():
            return int(line[6:])
    return None


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_kind(root: Path, kind: str, seed: int, image_size: int, train: int, test_good: int,
                per_defect: int) -> None:
    splits = [("train", "good", None, train, 0), ("test", "good", None, test_good, 1)]
    splits += [("test", defect, defect, per_defect, 2 + i)
               for i, defect in enumerate(DEFECT_TYPES[kind])]
    product = _product(seed, kind)
    for split, folder_name, defect, count, code in splits:
        folder = root / kind / split / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        masks = root / kind / "ground_truth" / folder_name
        if defect is not None:
            masks.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            sample = render_sample(kind, defect, _sample_rng(seed, kind, code, index), image_size, product)
            _save_png(sample.image, folder / f"{index:03d}.png")
            if defect is not None:
                _save_png(sample.mask.astype(np.uint8) * 255, masks / f"{index:03d}_mask.png")


def _check_counts(image_size: int, counts: dict[str, int]) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise DraemError(f"demo image size {image_size}: must be at least {MIN_IMAGE_SIZE}")
    for name, value in counts.items():
        if value < 0 or (name == "train_per_kind" and value < 1):
            raise DraemError(f"demo {name}={value}: must be a positive count")


def generate_demo_dataset(out: Path, seed: int = 0, kinds: Sequence[str] | None = None,
                          image_size: int = 128, train_per_kind: int = 80,
                          test_good_per_kind: int = 20, test_defects_per_type: int = 10) -> Path:
    """Write the demo dataset (MVTec AD layout) under `out` and return `out`.

    A folder already holding the same dataset is left as it is; any other non-empty folder is
    refused unless it is a demo dataset made with the same seed, which is replaced.
    """
    out = Path(out)
    kinds = tuple(DEMO_KINDS if kinds is None else kinds)
    unknown = [kind for kind in kinds if kind not in DEMO_KINDS]
    if unknown or not kinds:
        raise DraemError(f"demo kinds {list(kinds)}: choose from {', '.join(DEMO_KINDS)}")
    if seed < 0:
        raise DraemError(f"demo seed {seed}: must be zero or positive")
    _check_counts(image_size, {"train_per_kind": train_per_kind,
                               "test_good_per_kind": test_good_per_kind,
                               "test_defects_per_type": test_defects_per_type})
    readme = _readme(seed, kinds, image_size, train_per_kind, test_good_per_kind,
                     test_defects_per_type)
    if out.exists() and not out.is_dir():
        raise DraemError(f"{out}: exists and is not a folder; choose another demo output folder")
    previous = out.is_dir() and any(out.iterdir())
    if previous:
        existing = out / "README.txt"
        if existing.is_file() and existing.read_text(encoding="utf-8", errors="replace") == readme:
            return out
        if _readme_seed(out) != seed:
            raise DraemError(f"{out}: folder is not empty and is not a demo dataset with seed "
                             f"{seed}; choose another folder or delete it")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        if partial.is_dir() and (not any(partial.iterdir()) or _readme_seed(partial) is not None):
            shutil.rmtree(partial)
        else:
            raise DraemError(f"{partial}: is in the way of the demo dataset; delete it")
    partial.mkdir(parents=True)
    (partial / "README.txt").write_text(readme, encoding="utf-8")
    for kind in kinds:
        _write_kind(partial, kind, seed, image_size, train_per_kind, test_good_per_kind,
                    test_defects_per_type)
    if previous:
        shutil.rmtree(out)
    elif out.is_dir():
        out.rmdir()
    partial.rename(out)
    return out
