"""Receptive fields: which input pixels a unit of a layer can see.

The recurrence, over the layers in forward order, for a layer of kernel k, stride s and padding p
(per axis; pointwise layers leave all three unchanged):

    size += (k - 1) * jump        offset -= p * jump        jump *= s

Unit (i, j) of a layer then sees input rows ``offset + i*jump`` to ``offset + i*jump + size - 1``
(likewise columns). numpy only.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from zfcore.errors import ArgumentError


class ReceptiveField(NamedTuple):
    """Receptive field of the units of one layer, per axis (H, W), in input pixels.

    Unit ``(i, j)`` sees input rows ``offset[0] + i*jump[0]`` to ``offset[0] + i*jump[0] + size[0] - 1``
    (likewise columns). ``offset`` is where unit (0, 0)'s field starts; it is negative when the field
    reaches into the zero padding.
    """
    size: tuple[int, int]
    jump: tuple[int, int]
    offset: tuple[int, int]

    def box(self, r: int, c: int, clip=None) -> tuple[int, int, int, int]:
        """Input pixels seen by unit (r, c): (top, left, bottom, right), inclusive; ``clip=(H, W)``
        clips the box to an H x W image (without it the box may reach into the padding)."""
        top, left = self.offset[0] + r * self.jump[0], self.offset[1] + c * self.jump[1]
        bottom, right = top + self.size[0] - 1, left + self.size[1] - 1
        if clip is None:
            return (top, left, bottom, right)
        H, W = clip
        return (max(top, 0), max(left, 0), min(bottom, H - 1), min(right, W - 1))

    def boxes(self, positions, clip) -> np.ndarray:
        """(..., 4) boxes of the units at ``positions`` (..., 2), clipped to ``clip`` = (H, W)."""
        pos = np.asarray(positions)
        flat = [self.box(int(r), int(c), clip=clip) for r, c in pos.reshape(-1, 2)]
        return np.array(flat, dtype=np.int64).reshape(pos.shape[:-1] + (4,))

    def patches(self, images, image_ids, positions) -> np.ndarray:
        """The field of each unit cut out of ``images`` (N, C, H, W): ``image_ids`` (...) and
        ``positions`` (..., 2) -> (..., C, size_h, size_w), zero-padded where the field hangs over the
        border (so every patch has the field's size)."""
        C, H, W = images.shape[1:]
        image_ids, positions = np.asarray(image_ids), np.asarray(positions)
        out = np.zeros(image_ids.shape + (C,) + tuple(self.size), images.dtype)
        for idx in np.ndindex(image_ids.shape):
            top, left, _, _ = self.box(*positions[idx])
            t0, l0, b, r = self.box(*positions[idx], clip=(H, W))
            out[idx][:, t0 - top:b + 1 - top, l0 - left:r + 1 - left] = \
                images[image_ids[idx], :, t0:b + 1, l0:r + 1]
        return out


def receptive_fields(layers, shapes) -> dict[str, ReceptiveField]:
    """``ReceptiveField`` of the output of every spatial layer of ``layers`` (in forward order, up to
    the first non-spatial one); ``shapes[i]`` is layer i's input shape (C, H, W)."""
    size, jump, off = np.array([1, 1]), np.array([1, 1]), np.array([0, 0])
    out = {}
    for layer, shape in zip(layers, shapes):
        if len(shape) != 3 or len(layer.output_shape(shape)) != 3:
            break
        g = layer.geometry(shape[1:])
        if g is not None:
            k, s, p = (np.asarray(v) for v in g)
            size = size + (k - 1) * jump
            off = off - p * jump
            jump = jump * s
        out[layer.name] = ReceptiveField(tuple(int(v) for v in size), tuple(int(v) for v in jump),
                                         tuple(int(v) for v in off))
    return out


def input_box(fields: dict, layer: str, out_shape, image_hw, position=None) -> tuple[int, int, int, int]:
    """Input pixels (top, left, bottom, right), inclusive and clipped to the image, that can influence
    unit ``position`` (row, col) of ``layer``, whose output is ``out_shape`` (C, Ho, Wo); for a
    non-spatial layer (not in ``fields``; position None) the whole image."""
    H, W = image_hw
    if layer not in fields:
        if position is not None:
            raise ArgumentError(f"layer {layer!r} is not spatial: position does not apply")
        return (0, 0, H - 1, W - 1)
    try:
        r, c = (int(v) for v in position)
    except (TypeError, ValueError):
        raise ArgumentError(f"position must be a (row, col) pair, got {position!r}") from None
    if not (0 <= r < out_shape[1] and 0 <= c < out_shape[2]):
        raise ArgumentError(f"position {(r, c)} out of range: layer {layer!r} maps are "
                            f"{out_shape[1]}x{out_shape[2]}")
    return fields[layer].box(r, c, clip=(H, W))
