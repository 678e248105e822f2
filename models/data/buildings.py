"""Seeded synthetic aerial-like RGB tiles with building footprint masks.

The scenes stand in for 8-bit RGB aerial imagery (about 0.3-0.5 m per pixel):
textured ground, asphalt roads, buildings of varied size and shape (rectangles
and L-shapes at any rotation) with gabled or flat roofs in colours that include
ones close to the ground and road colours, shadows cast away from the sun,
trees that overhang building edges, a slight optical blur and sensor noise.
Snow cover, patches of closed forest and paved lots (flat, roof-coloured, with
no shadow) can be switched on through ``SceneConfig``.

The mask is the full footprint, also where a tree hides part of a roof, as in
hand-labelled footprint data sets. Buildings keep a small gap between each other
so that every footprint is its own connected component, which is what the
building-level F1 (``models.metrics``) counts.

Everything is vectorised numpy over small windows, so that training data can be
made on the fly (a 256x256 tile takes a few milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# RGB roof palette; the last rows are deliberately close to the road and bare
# soil colours below, so that colour alone cannot separate roofs from ground.
ROOF_COLOURS = np.array(
    [
        [150, 70, 55],  # red clay tiles
        [175, 95, 70],  # terracotta
        [110, 110, 115],  # grey concrete
        [200, 200, 195],  # light membrane
        [70, 70, 80],  # dark slate
        [130, 100, 80],  # brown shingle
        [90, 110, 120],  # blue-grey metal
        [215, 210, 200],  # white
        [95, 95, 95],  # close to asphalt
        [160, 140, 110],  # close to bare soil
    ],
    dtype=np.float32,
)
GROUND_COLOURS = np.array(
    [
        [95, 120, 70],  # grass
        [120, 130, 85],  # dry grass
        [160, 140, 110],  # bare soil
        [140, 130, 115],  # gravel
    ],
    dtype=np.float32,
)
# Snow, lit and in shade: as bright as the lightest roofs.
SNOW_COLOURS = np.array([[228, 230, 235], [196, 202, 214]], dtype=np.float32)
ROAD_COLOUR = np.array([95, 95, 98], dtype=np.float32)
TREE_COLOUR = np.array([45, 75, 40], dtype=np.float32)


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene generator; the defaults make the training distribution.

    Attributes:
        buildings: inclusive range of buildings attempted per 256x256 area.
        half_size: inclusive range of a building's half side, in pixels.
        roads: inclusive range of roads per tile.
        trees: inclusive range of trees per 256x256 area.
        gap: minimum free pixels between two buildings.
        noise_sigma: inclusive range of the Gaussian sensor noise, in digital numbers.
        snow: probability of a snow-covered tile.
        forest: probability of a tile with a patch of closed tree canopy.
        lots: probability of a tile with paved lots (flat, shadowless, roof-coloured).

    ``snow``, ``forest`` and ``lots`` are off by default: the shipped model was
    trained without them (see ``models/shipped/footprints.md``). When they are
    off the generator draws no random numbers for them, so tiles are unchanged.
    """

    buildings: tuple[int, int] = (4, 14)
    half_size: tuple[int, int] = (6, 30)
    roads: tuple[int, int] = (0, 2)
    trees: tuple[int, int] = (4, 20)
    gap: int = 3
    noise_sigma: tuple[float, float] = (2.0, 7.0)
    snow: float = 0.0
    forest: float = 0.0
    lots: float = 0.0


def _smooth_field(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, bilinearly upsampled.

    Returns:
        ``(size, size)`` float32.
    """
    n = size // cell + 2
    coarse = rng.standard_normal((n, n)).astype(np.float32)
    fine = ndimage.zoom(coarse, cell, order=1, prefilter=False)
    return fine[:size, :size]


def _ground(rng: np.random.Generator, size: int, snow: float = 0.0) -> np.ndarray:
    """Textured ground: two blended ground colours, patches and fine grain.

    Args:
        rng: source of randomness.
        size: tile side in pixels.
        snow: probability that the ground is snow instead.

    Returns:
        ``(3, size, size)`` float32 in digital numbers.
    """
    a, b = GROUND_COLOURS[rng.choice(len(GROUND_COLOURS), 2, replace=False)]
    if snow and rng.random() < snow:
        a, b = SNOW_COLOURS
    blend = np.clip(0.5 + 0.5 * _smooth_field(rng, size, 48), 0.0, 1.0)
    img = a[:, None, None] * blend + b[:, None, None] * (1.0 - blend)
    img *= 1.0 + 0.08 * _smooth_field(rng, size, 8)
    img += rng.normal(0.0, 6.0, (1, size, size)).astype(np.float32)
    return img.astype(np.float32)


def _draw_roads(rng: np.random.Generator, img: np.ndarray, occupied: np.ndarray, n: int) -> None:
    """Paint ``n`` straight roads in place and mark them occupied for buildings."""
    size = img.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(n):
        theta = rng.uniform(0, np.pi)
        # Line through a random point, normal (cos, sin): distance is |n.(p - p0)|.
        px, py = rng.uniform(0.1 * size, 0.9 * size, 2)
        dist = np.abs((xx - px) * np.cos(theta) + (yy - py) * np.sin(theta))
        half_width = rng.uniform(4, 10)
        road = dist < half_width
        shade = rng.uniform(0.85, 1.15)
        img[:, road] = (ROAD_COLOUR * shade)[:, None]
        # Lane marking on wider roads.
        if half_width > 7:
            img[:, dist < 0.8] = np.array([200, 200, 190], dtype=np.float32)[:, None]
        occupied |= dist < half_width + 3


def _footprint(rng: np.random.Generator, half: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rectangle or L-shaped footprint at a random rotation, on its own window.

    Returns:
        ``(inside, u, v)``: ``inside`` the ``(w, w)`` bool footprint; ``u``, ``v``
        the rotated coordinates (float32, same shape) that roofs are shaded by.
    """
    aspect = rng.uniform(0.45, 1.0)
    hu, hv = half, max(4.0, half * aspect)
    w = int(np.ceil(np.hypot(hu, hv))) * 2 + 3
    c = (w - 1) / 2.0
    yy, xx = np.mgrid[0:w, 0:w].astype(np.float32)
    # Most buildings align roughly with a grid; some are at any angle.
    theta = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.08)
    if rng.random() < 0.4:
        theta = rng.uniform(0, np.pi)
    cos, sin = np.cos(theta), np.sin(theta)
    u = (xx - c) * cos + (yy - c) * sin
    v = -(xx - c) * sin + (yy - c) * cos
    inside = (np.abs(u) <= hu) & (np.abs(v) <= hv)
    if rng.random() < 0.3:
        # L-shape: cut away one corner quadrant of the rectangle.
        su, sv = rng.choice([-1.0, 1.0], 2)
        cut_u = rng.uniform(0.0, 0.5) * hu
        cut_v = rng.uniform(0.0, 0.5) * hv
        inside &= ~((su * u > cut_u) & (sv * v > cut_v))
    return inside, u, v


def _place(
    rng: np.random.Generator, inside: np.ndarray, occupied: np.ndarray
) -> tuple[slice, slice, slice, slice] | None:
    """Find a free spot for a shape; it may run off the tile edge.

    Returns:
        ``(ys, xs, sy, sx)``: the tile window and the matching window of the
        shape, or None when a few random tries all hit something.
    """
    size, w = occupied.shape[0], inside.shape[0]
    for _try in range(6):
        y0 = int(rng.integers(-w // 3, size - 2 * w // 3))
        x0 = int(rng.integers(-w // 3, size - 2 * w // 3))
        ys = slice(max(y0, 0), min(y0 + w, size))
        xs = slice(max(x0, 0), min(x0 + w, size))
        sy, sx = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
        local = inside[sy, sx]
        if local.any() and not (occupied[ys, xs] & local).any():
            return ys, xs, sy, sx
    return None


def _draw_forest(rng: np.random.Generator, img: np.ndarray, occupied: np.ndarray) -> None:
    """Paint a patch of closed canopy in place: dark, crown-textured, building-free."""
    size = img.shape[-1]
    region = _smooth_field(rng, size, 64) > rng.uniform(0.2, 0.9)
    if not region.any():
        return
    crowns = _smooth_field(rng, size, 3)
    tone = (TREE_COLOUR * rng.uniform(0.6, 1.1))[:, None, None] * (1.0 + 0.35 * crowns)[None]
    img[:, region] = tone[:, region]
    occupied |= ndimage.binary_dilation(region, iterations=3)


def _draw_lots(rng: np.random.Generator, img: np.ndarray, occupied: np.ndarray) -> None:
    """Paint one or two paved lots in place: flat, roof-coloured, without shadow."""
    size = img.shape[-1]
    for _ in range(int(rng.integers(1, 3))):
        inside, _, _ = _footprint(rng, float(rng.uniform(15, 40)))
        if inside.shape[0] >= size:
            continue
        spot = _place(rng, inside, occupied)
        if spot is None:
            continue
        ys, xs, sy, sx = spot
        local = inside[sy, sx]
        colour = ROOF_COLOURS[rng.choice([2, 3, 7, 8])] * rng.uniform(0.9, 1.1)
        window = img[:, ys, xs]
        window[:, local] = colour[:, None]
        occupied[ys, xs] |= ndimage.binary_dilation(local, iterations=3)


def make_tile(
    rng: np.random.Generator, size: int = 256, config: SceneConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene.

    Args:
        rng: the only source of randomness, so a seed fixes the tile.
        size: tile side in pixels.
        config: scene knobs; the defaults are the training distribution.

    Returns:
        ``(image, mask)``: image ``(3, size, size)`` uint8 RGB; mask
        ``(size, size)`` uint8, 1 on building footprints and 0 elsewhere.
    """
    cfg = config or SceneConfig()
    area = (size / 256.0) ** 2
    img = _ground(rng, size, cfg.snow)
    occupied = np.zeros((size, size), dtype=bool)
    _draw_roads(rng, img, occupied, int(rng.integers(cfg.roads[0], cfg.roads[1] + 1)))
    if cfg.forest and rng.random() < cfg.forest:
        _draw_forest(rng, img, occupied)
    if cfg.lots and rng.random() < cfg.lots:
        _draw_lots(rng, img, occupied)

    mask = np.zeros((size, size), dtype=bool)
    roof = np.zeros_like(img)
    sun = rng.uniform(0, 2 * np.pi)
    shadow_len = rng.uniform(2.0, 8.0)
    n_buildings = round(rng.integers(cfg.buildings[0], cfg.buildings[1] + 1) * area)
    for _ in range(n_buildings):
        half = float(rng.uniform(cfg.half_size[0], cfg.half_size[1]))
        inside, u, _v = _footprint(rng, half)
        w = inside.shape[0]
        if w >= size:
            continue
        spot = _place(rng, inside, occupied)
        if spot is None:
            continue
        ys, xs, sy, sx = spot
        local, lu = inside[sy, sx], u[sy, sx]
        colour = ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))] * rng.uniform(0.85, 1.15)
        if rng.random() < 0.6:
            # Gabled roof: the two slopes catch the sun differently.
            side = np.where(lu > 0, rng.uniform(0.75, 0.9), rng.uniform(1.0, 1.1))
        else:
            side = np.ones_like(lu)
        patch = colour[:, None, None] * side[None]
        region = roof[:, ys, xs]
        region[:, local] = patch[:, local]
        mask[ys, xs] |= local
        occupied[ys, xs] |= ndimage.binary_dilation(local, iterations=cfg.gap)

    # Roof texture and a darker outline (eaves), then the roofs onto the ground.
    roof *= 1.0 + rng.normal(0.0, 0.03, (1, size, size)).astype(np.float32)
    edge = mask & ~ndimage.binary_erosion(mask)
    roof[:, edge] *= 0.8
    # Shadows: the footprint shifted away from the sun, darkening what it falls on.
    dy, dx = round(-np.sin(sun) * shadow_len), round(-np.cos(sun) * shadow_len)
    shadow = ndimage.shift(mask.astype(np.float32), (dy, dx), order=0) > 0.5
    shadow &= ~mask
    img[:, shadow] *= rng.uniform(0.35, 0.55)
    img[:, mask] = roof[:, mask]

    # Trees: round, textured crowns; some deliberately on building edges.
    n_trees = round(rng.integers(cfg.trees[0], cfg.trees[1] + 1) * area)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    edge_idx = np.flatnonzero(edge)
    grain = _smooth_field(rng, size, 3)
    for _ in range(n_trees):
        r = rng.uniform(3.0, 9.0)
        if edge_idx.size and rng.random() < 0.35:
            cy, cx = np.unravel_index(edge_idx[rng.integers(edge_idx.size)], mask.shape)
            cy, cx = float(cy), float(cx)
        else:
            cy, cx = rng.uniform(0, size, 2)
        y0, y1 = max(int(cy - r - 1), 0), min(int(cy + r + 2), size)
        x0, x1 = max(int(cx - r - 1), 0), min(int(cx + r + 2), size)
        d = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx)
        crown = d < r
        # Lit on one side, dark core, plus its own small shadow.
        light = 1.0 + 0.25 * (1.0 - d / r) + 0.2 * grain[y0:y1, x0:x1]
        tone = TREE_COLOUR * rng.uniform(0.8, 1.25)
        img[:, y0:y1, x0:x1][:, crown] = (tone[:, None, None] * light[None])[:, crown]

    img = ndimage.uniform_filter(img, size=(1, 2, 2))
    img *= rng.uniform(0.85, 1.15)  # exposure
    sigma = rng.uniform(*cfg.noise_sigma)
    img += rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def make_batch(
    rng: np.random.Generator, n: int, size: int = 256, config: SceneConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` tiles stacked.

    Returns:
        ``(images, masks)``: ``(n, 3, size, size)`` uint8 and ``(n, size, size)`` uint8.
    """
    tiles = [make_tile(rng, size, config) for _ in range(n)]
    return np.stack([t[0] for t in tiles]), np.stack([t[1] for t in tiles])
