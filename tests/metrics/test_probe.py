"""The linear probe separates what is linearly separable and nothing more."""

import torch

from dynacomp.metrics.probe import ProbeConfig, linear_probe


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    x = torch.nn.functional.one_hot(labels, 3).float() * 4 + torch.randn(n, 3, generator=g) * 0.5
    return x, [["a", "b", "c"][i] for i in labels]


def test_separable_blobs():
    (x, y), (xt, yt) = _blobs(300, 0), _blobs(200, 1)
    result = linear_probe(x, y, xt, yt, ProbeConfig(steps=100))
    assert result["accuracy"] > 0.97 and result["classes"] == 3 and result["unseen"] == 0


def test_noise_is_chance_and_unseen_labels_are_dropped():
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g)
    y = ["a" if i % 2 else "b" for i in range(400)]
    result = linear_probe(x, y, xt, y[:-1] + ["z"], ProbeConfig(steps=100))
    assert 0.35 < result["accuracy"] < 0.65 and result["unseen"] == 1
