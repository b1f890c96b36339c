"""Mesh construction from config shapes, with named errors for impossible layouts."""

import jax
import pytest

from diffjax import sharding


def test_mesh_shapes_fill_minus_one():
    assert dict(sharding.make_mesh((-1, 1, 1)).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(sharding.make_mesh((2, -1, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    mesh = sharding.make_mesh((1, 2, 4))
    assert sharding.data_size(mesh) == 2
    assert sharding.make_mesh((-1, 1, 1), devices=jax.devices()[:2]).size == 2


@pytest.mark.parametrize("shape,msg", [((3, -1, 1), "not divisible by 3"),
                                       ((2, 2, 1), "has 4 devices, but 8"),
                                       ((-1, -1, 1), "at most one -1"),
                                       ((8, 1), "must have 3 sizes")])
def test_bad_mesh_shapes_are_named(shape, msg):
    with pytest.raises(ValueError, match=msg):
        sharding.make_mesh(shape)
