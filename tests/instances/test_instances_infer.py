"""From a model's probabilities to instances, as predict and evaluate do it (seglab.instances.infer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seglab.errors import ConfigError
from seglab.instances import InstanceParams, instances_from_probs, interior_boundary_target


def em_slice() -> np.ndarray:
    """Two-class probabilities (2, 40, 40) of an EM-like slice: four cells, a membrane cross between them that
    the model missed for 3 pixels (P(cell) 0.6 there), so the cells' components merge through the gap."""
    cell = np.full((40, 40), 0.99)
    cell[19:21, :] = 0.05
    cell[:, 19:21] = 0.05
    cell[19:21, 8:11] = 0.6  # the missed stretch of membrane: joins the two upper and the two lower cells
    return np.stack([1 - cell, cell])


def test_learned_with_fill_splits_cells_at_a_missed_membrane_and_labels_every_pixel():
    probs = em_slice()
    merged = instances_from_probs(probs, "components")
    assert merged.max() == 3  # the gap merges two cells, the other two stay apart
    split = instances_from_probs(probs, "learned", params=InstanceParams(seed_threshold=0.9, fill=True))
    assert split.max() == 4 and (split > 0).all()
    for quadrant in (np.s_[:19, :19], np.s_[:19, 21:], np.s_[21:, :19], np.s_[21:, 21:]):
        assert len(np.unique(split[quadrant])) == 1  # each cell one object, whole
    # a tensor gives the same labels
    assert np.array_equal(instances_from_probs(torch.from_numpy(probs), "components"), merged)


def test_interior_boundary_probabilities_use_one_minus_background():
    inst = np.zeros((30, 40), np.int64)
    inst[5:25, 4:20], inst[5:25, 20:36] = 1, 2  # two touching boxes
    target = interior_boundary_target(inst, width=2)
    probs = np.eye(3)[target].transpose(2, 0, 1)  # a perfect three-class prediction
    assert instances_from_probs(probs, "components", target="interior_boundary").max() == 1
    labels = instances_from_probs(probs, "learned", target="interior_boundary")
    assert labels.max() == 2
    assert {tuple(np.unique(labels[inst == k])) for k in (1, 2)} == {
        (1,),
        (2,),
    }  # each box exactly one object


@pytest.mark.parametrize(
    "items, message",
    [
        (["size=3"], "KEY one of threshold, min_size, h, seed_threshold, fill"),
        (["h"], "use KEY=VALUE"),
        (["fill=maybe"], "fill must be true or false"),
        (["min_size=-1"], "min_size must be >= 0"),
    ],
)
def test_instance_params_parse_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        InstanceParams.parse(items)


def test_instance_params_parse_values():
    p = InstanceParams.parse(["h=3", "fill=true", "min_size=20", "seed_threshold=0.9"])
    assert (p.h, p.fill, p.min_size, p.seed_threshold, p.threshold) == (3.0, True, 20, 0.9, 0.5)
    assert isinstance(p.min_size, int)
