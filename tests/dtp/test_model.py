import pytest
import torch
import torch.nn.functional as F

from dynacomp.dtp import SOURCES, DTPConfig, generate
from dynacomp.dtp.sources import EntropyBoundaries, UnigramBoundaries
from tests.dtp.tiny import VOCAB, random_ids, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _forward(model, ids, seed=0):
    torch.manual_seed(seed)  # the same Gumbel noise and dropout masks for both texts
    return model(ids)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("source", SOURCES)
def test_logits_never_depend_on_later_characters(source, training):
    model = tiny_model(source).train(training)
    ids = random_ids(3, 40, seed=1)
    base = _forward(model, ids)
    if base.boundaries is not None:
        rate = base.boundaries.mean().item()
        assert 0.05 < rate < 0.95, f"boundaries too uniform to test ({rate})"
    for t in (0, 7, 19, 33):
        changed = ids.clone()
        changed[:, t + 1:] = random_ids(3, 40 - t - 1, seed=100 + t)
        out = _forward(model, changed)
        torch.testing.assert_close(out.logits[:, :t + 1], base.logits[:, :t + 1], atol=1e-5, rtol=1e-5)
        if base.boundaries is not None:
            assert torch.equal(out.boundaries[:, :t + 1], base.boundaries[:, :t + 1])


@pytest.mark.parametrize("source", SOURCES)
def test_cached_decoding_equals_the_full_pass(source):
    model = tiny_model(source).eval()
    ids = random_ids(1, 30, seed=2)
    full = model(ids)
    for chunks in ([30], [1] * 30, [9, 1, 1, 5, 1, 13]):
        cache, logits, boundaries, start = model.new_cache(), [], [], 0
        for n in chunks:
            out = model(ids[:, start:start + n], cache=cache)
            logits.append(out.logits)
            boundaries.append(out.boundaries)
            start += n
        torch.testing.assert_close(torch.cat(logits, 1), full.logits, atol=1e-5, rtol=1e-5)
        if full.boundaries is not None:
            assert torch.equal(torch.cat(boundaries, 1), full.boundaries)
        assert out.aux_loss.item() == 0    # decoding skips the auxiliary loss ...
    assert (full.aux_loss.item() > 0) == (source in ("entropy", "gumbel"))   # ... which the full pass has


@pytest.mark.parametrize("source", ["none", "whitespace", "gumbel"])
def test_cached_generation_equals_uncached(source):
    model = tiny_model(source)
    prompt = random_ids(1, 5, seed=3)
    greedy = generate(model, prompt, 25, temperature=0, use_cache=True)
    assert torch.equal(greedy, generate(model, prompt, 25, temperature=0, use_cache=False))
    sampled = [generate(model, prompt, 25, temperature=1.0, top_k=4, use_cache=c,
                        generator=torch.Generator().manual_seed(5)) for c in (True, False)]
    assert torch.equal(*sampled)
    assert sampled[0].shape == (1, 30) and torch.equal(sampled[0][:, :5], prompt)


def test_output_shapes_and_rule_boundaries():
    ids = random_ids(2, 12, seed=4)
    out = tiny_model("fixed").eval()(ids)
    assert out.logits.shape == (2, 12, VOCAB) and out.aux_loss.item() == 0
    assert out.boundaries[0].tolist() == [0, 0, 1] * 4
    out = tiny_model("whitespace").eval()(ids)
    assert torch.equal(out.boundaries, (ids == 0).float())
    assert tiny_model("none")(ids).boundaries is None


def test_gumbel_samples_only_in_training():
    model = tiny_model("gumbel")
    ids = random_ids(2, 64, seed=5)
    model.eval()
    assert torch.equal(model(ids).boundaries, model(ids).boundaries)
    model.train()
    assert not torch.equal(model(ids).boundaries, model(ids).boundaries)


def test_gumbel_boundaries_learn_from_the_lm_loss_and_unigram_ones_do_not():
    ids = random_ids(2, 32, seed=6)
    for source, learns in (("gumbel", True), ("unigram", False)):
        model = tiny_model(source).train()
        F.cross_entropy(model(ids).logits.flatten(0, 1), ids.flatten()).backward()
        grad = model.source.predictor[-1].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == learns


def test_supervised_loss_takes_logits_once_through_the_sigmoid():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    p = torch.sigmoid(logits)
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    loss = UnigramBoundaries(DTPConfig(d_model=8, n_heads=1, d_ff=8)).aux_loss(logits, None, logits, targets)
    torch.testing.assert_close(loss, expected)


def test_entropy_targets_are_the_spikes_of_the_lm_entropy():
    lm_logits = torch.full((1, 5, 8), -1e4)
    lm_logits[0, :, 0] = 0.0
    lm_logits[0, [1, 4]] = 0.0                       # entropies 0, log 8, 0, 0, log 8
    spikes = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])   # above both predecessors (k = 2); position 0 always
    predictor_logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0]])
    loss = EntropyBoundaries(DTPConfig(d_model=8, n_heads=1, d_ff=8, entropy_k=2)).aux_loss(
        predictor_logits, None, lm_logits, None)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(predictor_logits, spikes))


@pytest.mark.parametrize("source", ["unigram", "entropy", "gumbel"])
def test_auxiliary_losses_are_finite_and_train_the_predictor(source):
    model = tiny_model(source).train()
    ids = random_ids(2, 32, seed=7)
    targets = (ids == 0).float() if source == "unigram" else None
    out = model(ids, boundary_targets=targets)
    assert out.aux_loss.item() > 0 and torch.isfinite(out.aux_loss)
    out.aux_loss.backward()
    assert model.source.predictor[0].weight.grad.abs().sum() > 0
