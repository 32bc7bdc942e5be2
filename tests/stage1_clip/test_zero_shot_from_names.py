"""Zero-shot classification through the classes' names (stage1_clip/evaluate.py) against a per-image loop."""
import math

import torch
import torch.nn.functional as F

from stage1_clip.evaluate import accuracy_from_names, correct_from_names, probabilities_from_names


def test_class_probability_is_the_softmax_mass_of_its_names_computed_one_image_at_a_time():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(6, 5, dtype=torch.float64), dim=-1)
    names = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=-1)
    name_class = torch.tensor([0, 2, 2, 1, 0, 2, 1])
    got = probabilities_from_names(images, names, name_class, 3, scale=20.0)  # [6, 3]
    for i in range(6):
        weights = [math.exp(20.0 * float(images[i] @ names[v])) for v in range(7)]
        for c in range(3):
            expected = sum(w for w, k in zip(weights, name_class.tolist()) if k == c) / sum(weights)
            assert abs(got[i, c].item() - expected) < 1e-12
    assert torch.allclose(got.sum(1), torch.ones(6, dtype=torch.float64))


def test_accuracy_counts_each_distinct_caption_once_for_its_commonest_label():
    # Images 0-1 show "cat" (animal), 2 shows "car" (vehicle), 3 shows "bus" (vehicle); "car" appears twice.
    axes = torch.eye(3, dtype=torch.float64)
    captions = ["cat", "cat", "car", "bus", "car"]
    labels = ["animal", "animal", "vehicle", "vehicle", "vehicle"]
    text = axes[[0, 0, 1, 2, 1]]  # [5, 3]: one axis per distinct caption
    images = axes[[0, 0, 1, 2, 2]]  # the last "car" image looks like a bus: still a vehicle
    assert accuracy_from_names(images, text, captions, labels, scale=50.0) == 1.0
    wrong = axes[[1, 0, 1, 2, 1]]  # image 0 looks like a car
    assert abs(accuracy_from_names(wrong, text, captions, labels, scale=50.0) - 0.8) < 1e-6
    assert correct_from_names(wrong, text, captions, labels, scale=50.0).tolist() == [False, True, True, True, True]
