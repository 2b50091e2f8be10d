"""Task inference: packed one-shot equals autograd through float masks; binary, exhaustive, G."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest
import torch

from supsup_cli.errors import ConfigError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.bits import pack_mask, unpack_mask
from supsup_cli.learn import objectives, taskid
from supsup_cli.learn.data import load_task
from supsup_cli.learn.mask_banks import DeviceMaskBank, HostMaskBank, MaskBank, StreamedMaskBank
from supsup_cli.learn.taskid import (
    METHODS,
    Decision,
    Method,
    alpha_gradient,
    infer_task,
    register_method,
    score_specs,
)
from supsup_cli.model.nets import build_net
from supsup_cli.model.supermask import split_flat
from supsup_cli.store import MaskStore

CONFIG_G = NetConfig("lenet-300-100", outputs=20, seed=3)  # outputs 10..19 are superfluous
TEN = tuple(range(10))


def random_bits(k: int, mask_bits: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((k, mask_bits)) < 0.5


def packed_of(bits: np.ndarray) -> np.ndarray:
    packed = np.packbits(bits, axis=1)
    assert np.array_equal(packed[0], pack_mask(bits[0]))  # the store's row format
    return packed


def reference_alpha_gradient(net, floats: torch.Tensor, x, objective: str, alive=None):
    """The reference code's way: stack float masks, autograd through α (what we must equal)."""
    floats = floats if alive is None else floats[torch.as_tensor(alive)]
    alphas = torch.full((len(floats),), 1.0 / len(floats), requires_grad=True)
    mask = alphas @ floats  # (D,)
    logits = net(x, split_flat(mask, net.config.mask_shapes))
    if objective == "H":
        value = objectives.entropy(logits).mean()
    else:
        value = logits[:, 10:].logsumexp(dim=1).mean()  # outputs 10.. are superfluous
    (grad,) = torch.autograd.grad(value, alphas)
    return grad


def reference_binary(net, floats: torch.Tensor, x) -> int:
    alive = np.arange(len(floats))
    while len(alive) > 1:
        grad = reference_alpha_gradient(net, floats, x, "H", alive).numpy()
        alive = np.sort(alive[np.argsort(grad, kind="stable")[: math.ceil(len(alive) / 2)]])
    return int(alive[0])


@pytest.fixture(scope="module")
def trained(permuted_store) -> MaskStore:
    return MaskStore.open(permuted_store)


@pytest.fixture(scope="module")
def bank(trained) -> MaskBank:
    return MaskBank.from_store(trained)


def images(spec: str, count: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_task(spec)
    return data.test_x[start : start + count], data.test_y[start : start + count]


@pytest.mark.parametrize("objective", ["H", "G"])
def test_one_shot_equals_autograd_through_float_superposition(objective: str) -> None:
    net = build_net(CONFIG_G)
    bits = random_bits(5, CONFIG_G.mask_bits, seed=1)
    x = torch.randn(16, 784, generator=torch.Generator().manual_seed(0))
    expected = reference_alpha_gradient(net, torch.from_numpy(bits).float(), x, objective)
    got = alpha_gradient(net, packed_of(bits), x, objective=objective, classes=TEN)
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * float(scale))
    with_counts = alpha_gradient(
        net, packed_of(bits), x, objective=objective, classes=TEN, counts=bits.sum(0)
    )
    torch.testing.assert_close(with_counts, got)


def test_one_shot_confidence_and_margin_come_from_the_gradient(bank, trained) -> None:
    x, _ = images("permuted:2", 64)
    grad = alpha_gradient(bank.net, trained.read_packed(), x, counts=trained.mask_counts())
    result = infer_task(bank, x)
    assert result.task == int(grad.argmin()) == 1
    tempered = torch.softmax(-grad.double() / taskid.CONFIDENCE_TEMPERATURE, 0)
    assert result.confidences[0] == pytest.approx(float(tempered[1]))
    runner_up = float(grad.sort().values[1])
    assert result.margins[0] == pytest.approx(runner_up - float(grad[1]), rel=1e-5)


def test_confidence_of_single_images_matches_their_accuracy(bank) -> None:
    """Calibrated: over single images of every stored task, the mean confidence is close to the
    fraction answered right (softmax(-score) at temperature 1 read about 0.5 here)."""
    x = torch.cat([images(f"permuted:{i}", 150, start=500)[0] for i in (1, 2, 3)])
    truth = np.repeat([0, 1, 2], 150)
    for method in ("one-shot", "exhaustive"):
        result = infer_task(bank, x, method=method, per="image")
        accuracy = float(np.mean(result.tasks == truth))
        assert accuracy > 0.7, method
        assert abs(float(result.confidences.mean()) - accuracy) < 0.1, method
        right = result.tasks == truth
        assert np.median(result.confidences[right]) > 0.9, method  # clear answers read near 1
        assert np.all(result.margins >= 0)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 64])
def test_binary_equals_reference_and_takes_log2_steps(k: int, monkeypatch) -> None:
    config = NetConfig("lenet-300-100", outputs=10, seed=5)
    bits = random_bits(k, config.mask_bits, seed=k)
    bank = MaskBank.from_packed(config, packed_of(bits), [TEN] * k)
    x = torch.randn(32, 784, generator=torch.Generator().manual_seed(k))
    calls = []
    original = taskid.mask_gradient
    monkeypatch.setattr(
        taskid, "mask_gradient", lambda *a, **kw: calls.append(1) or original(*a, **kw)
    )
    result = infer_task(bank, x, method="binary")
    assert len(calls) == math.ceil(math.log2(k))
    assert result.task == reference_binary(bank.net, torch.from_numpy(bits).float(), x)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 64])
def test_all_methods_find_a_trained_mask_among_random_ones(k: int, trained) -> None:
    """Task 0 of the trained store planted at position k // 2 among random 50% masks."""
    planted = k // 2
    bits = random_bits(k, trained.net.mask_bits, seed=100 + k)
    bits[planted] = trained.read_mask(0)
    bank = MaskBank.from_packed(trained.net, packed_of(bits), [TEN] * k)
    x, y = images("permuted:1", 128)
    for method in ("one-shot", "binary", "exhaustive"):
        result = infer_task(bank, x, method=method)
        assert result.task == planted, method
        assert np.all(result.tasks == planted)
        assert 0 < result.confidences[0] <= 1
    assert (torch.from_numpy(result.predictions) == y).float().mean() > 0.8


def test_methods_agree_on_batches_of_each_task(bank) -> None:
    for true_task, spec in enumerate(["permuted:1", "permuted:2", "permuted:3"]):
        x, _ = images(spec, 128, start=200)
        found = {
            m: infer_task(bank, x, method=m).task for m in ("one-shot", "binary", "exhaustive")
        }
        assert set(found.values()) == {true_task}, found


def test_per_image_on_a_batch_mixing_three_tasks(bank) -> None:
    parts = [images(f"permuted:{t}", 10, start=300)[0] for t in (1, 2, 3)]
    x = torch.stack(parts, dim=1).reshape(30, 784)  # images of tasks 0, 1, 2, 0, 1, 2, ...
    truth = np.tile([0, 1, 2], 10)
    result = infer_task(bank, x, per="image")
    assert result.tasks.shape == (30,) and result.per == "image"
    assert (result.tasks == truth).mean() >= 0.8
    # The vectorised per-example gradients equal one batch-of-one query per image.
    one_by_one = [infer_task(bank, x[i : i + 1]).tasks[0] for i in range(9)]
    assert result.tasks[:9].tolist() == one_by_one
    exhaustive = infer_task(bank, x, method="exhaustive", per="image")
    assert (exhaustive.tasks == truth).mean() >= 0.8
    binary = infer_task(bank, x[:6], method="binary", per="image")
    assert binary.tasks.shape == (6,)


def test_predictions_are_restricted_to_the_inferred_tasks_classes() -> None:
    classes = [(0, 1), (2, 3), (4, 5)]
    bits = random_bits(3, CONFIG_G.mask_bits, seed=9)
    bank = MaskBank.from_packed(CONFIG_G, packed_of(bits), classes)
    x = torch.randn(20, 784, generator=torch.Generator().manual_seed(1))
    result = infer_task(bank, x, objective="G", per="image")
    for task, label in zip(result.tasks, result.predictions, strict=True):
        assert label in classes[task]
    # G treats every output no task uses (6..19) as superfluous.
    assert bank.superfluous().tolist() == list(range(6, 20))


def test_g_objective_methods_agree_with_reference() -> None:
    net_bits = random_bits(4, CONFIG_G.mask_bits, seed=11)
    bank = MaskBank.from_packed(CONFIG_G, packed_of(net_bits), [TEN] * 4)
    x = torch.randn(32, 784, generator=torch.Generator().manual_seed(2))
    expected = reference_alpha_gradient(bank.net, torch.from_numpy(net_bits).float(), x, "G")
    assert infer_task(bank, x, objective="G").task == int(expected.argmin())
    values = [
        bank.net(x, bank.masks_of(i))[:, 10:].logsumexp(dim=1).mean().item() for i in range(4)
    ]
    assert infer_task(bank, x, method="exhaustive", objective="G").task == int(np.argmin(values))


def test_torch_product_path_equals_numpy_path(bank) -> None:
    """The CUDA code path (torch products on the tensors' device), run on the CPU."""
    assert isinstance(bank, HostMaskBank)
    shared = {f.name: getattr(bank, f.name) for f in fields(MaskBank)}
    torch_bank = DeviceMaskBank(
        **shared, packed=bank.packed, packed_on_device=torch.from_numpy(bank.packed)
    )
    x, _ = images("permuted:3", 40)
    for method, per in (("one-shot", "batch"), ("binary", "batch"), ("one-shot", "image")):
        a = infer_task(bank, x, method=method, per=per)
        b = infer_task(torch_bank, x, method=method, per=per)
        assert a.tasks.tolist() == b.tasks.tolist()
        np.testing.assert_allclose(a.confidences, b.confidences, rtol=1e-4)
        assert a.predictions.tolist() == b.predictions.tolist()


def test_bank_counts_match_the_stores(trained, bank) -> None:
    from_bits = MaskBank.from_packed(trained.net, trained.read_packed(), [TEN] * 3)
    np.testing.assert_array_equal(from_bits.counts, trained.mask_counts())
    np.testing.assert_array_equal(unpack_mask(bank.packed[2], bank.mask_bits), trained.read_mask(2))


def test_score_specs_reports_task_and_class_accuracy(bank) -> None:
    scores = score_specs(bank, ["permuted:2", "permuted:9"], batch=100, trials=3, seed=4)
    known, unknown = scores
    assert known.true_tasks == (1,) and known.decisions == 3 and known.images == 300
    assert known.task_accuracy == 1.0 and known.class_accuracy > 0.8
    assert unknown.true_tasks == () and unknown.task_accuracy is None
    again = score_specs(bank, ["permuted:2"], batch=100, trials=3, seed=4)[0]
    assert again == known
    walked = score_specs(bank, ["permuted:1"], batch=300, per="image", method="exhaustive")[0]
    assert walked.images == len(load_task("permuted:1").test_y) == walked.decisions


def test_registered_method_is_dispatched(bank, monkeypatch) -> None:
    monkeypatch.setitem(
        METHODS, "always-last", Method("always-last", "test", lambda q: Decision(2, 0.5))
    )
    x, _ = images("permuted:1", 8)
    result = infer_task(bank, x, method="always-last", per="image")
    assert result.tasks.tolist() == [2] * 8 and result.confidences.tolist() == [0.5] * 8
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("one-shot", "again", lambda q: Decision(0, 1.0)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "two-shot"}, "valid: one-shot, binary, exhaustive"),
        ({"objective": "K"}, "valid: H, G"),
        ({"per": "pixel"}, "valid: batch, image"),
        ({"objective": "G"}, "superfluous outputs"),
    ],
)
def test_bad_options_are_clear_errors(bank, kwargs, message) -> None:
    x, _ = images("permuted:1", 4)
    with pytest.raises(ConfigError, match=message):
        infer_task(bank, x, **kwargs)


def test_bad_inputs_are_clear_errors(bank, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"\(n >= 1, 784\)"):
        infer_task(bank, torch.zeros(3, 28, 28))
    with pytest.raises(ConfigError, match=r"\(n >= 1, 784\)"):
        infer_task(bank, torch.zeros(0, 784))
    empty = MaskStore.create(tmp_path / "empty.zarr", CONFIG_G, "topk", 0.5)
    with pytest.raises(ConfigError, match="holds no tasks"):
        infer_task(empty, torch.zeros(1, 784))
    with pytest.raises(ConfigError, match="classes"):
        alpha_gradient(bank.net, bank.packed, torch.zeros(1, 784), objective="G")


def test_tasks_with_dropped_masks_are_skipped(permuted_store, monkeypatch) -> None:
    """After `hopfield-encode --drop-masks` a task has no bits: the bank keeps the others and
    reports the store's task indices."""
    monkeypatch.setattr(MaskStore, "dropped_tasks", lambda self: (1,))
    store = MaskStore.open(permuted_store)
    bank = MaskBank.from_store(store)
    assert bank.task_ids == (0, 2) and bank.task_count == 2
    np.testing.assert_array_equal(
        bank.counts, store.read_mask(0).astype(np.uint32) + store.read_mask(2)
    )
    x, _ = images("permuted:3", 64)
    for method in ("one-shot", "binary", "exhaustive"):
        assert infer_task(bank, x, method=method).task == 2
    assert score_specs(bank, ["permuted:3"], batch=64, trials=1)[0].true_tasks == (2,)
    monkeypatch.setattr(MaskStore, "dropped_tasks", lambda self: (0, 1, 2))
    with pytest.raises(ConfigError, match="dropped"):
        MaskBank.from_store(store)


def test_nets_with_per_task_statistics_use_batch_statistics_when_task_unknown() -> None:
    config = NetConfig("bn-2048-2048", outputs=10, seed=2)
    bits = random_bits(3, config.mask_bits, seed=2)
    stats = np.concatenate([np.zeros((3, 2048)), np.ones((3, 2048))] * 2, axis=1)
    bank = MaskBank.from_packed(
        config, packed_of(bits), [TEN] * 3, task_stats=stats.astype(np.float32)
    )
    x = torch.randn(8, 784, generator=torch.Generator().manual_seed(3))
    expected = reference_alpha_gradient_bn(bank.net, torch.from_numpy(bits).float(), x)
    for method in ("one-shot", "binary", "exhaustive"):
        result = infer_task(bank, x, method=method)
        assert 0 <= result.task < 3
    assert infer_task(bank, x).task == int(expected.argmin())
    with pytest.raises(ConfigError, match="batch statistics"):
        infer_task(bank, x, per="image")
    with pytest.raises(ConfigError, match="at least 2 images"):
        infer_task(bank, x[:1])


def reference_alpha_gradient_bn(net, floats: torch.Tensor, x) -> torch.Tensor:
    with net.batch_statistics():
        return reference_alpha_gradient(net, floats, x, "H")


def test_streamed_bank_answers_as_the_loaded_one(trained, bank, monkeypatch) -> None:
    """Masks read from the store in blocks for every product (small blocks here, so that a
    query spans several) give the same tasks, confidences and classes as masks held in memory."""
    monkeypatch.setattr("supsup_cli.store.layout.READ_SLAB_BYTES", 1)  # one mask per block
    streamed = MaskBank.from_store(trained, stream=True)
    assert isinstance(streamed, StreamedMaskBank) and not hasattr(streamed, "packed")
    assert streamed.task_count == bank.task_count
    np.testing.assert_array_equal(streamed.counts, bank.counts)
    x = torch.cat([images(f"permuted:{n}", 12)[0] for n in (1, 2, 3)])
    for method, per in (
        ("one-shot", "batch"),
        ("binary", "batch"),
        ("exhaustive", "batch"),
        ("one-shot", "image"),
    ):
        a = infer_task(bank, x, method=method, per=per)
        b = infer_task(streamed, x, method=method, per=per)
        assert a.tasks.tolist() == b.tasks.tolist(), (method, per)
        assert a.predictions.tolist() == b.predictions.tolist(), (method, per)
        np.testing.assert_allclose(a.confidences, b.confidences, rtol=1e-5)
    rows = np.array([2, 0])
    torch.testing.assert_close(streamed.mean_mask(rows), bank.mean_mask(rows))


def test_blocks_of_masks_cover_every_task_once(trained, monkeypatch) -> None:
    monkeypatch.setattr("supsup_cli.store.layout.READ_SLAB_BYTES", 1)
    blocks = list(trained.iter_packed([2, 0, 1]))
    assert [len(b) for b in blocks] == [1, 1, 1]
    np.testing.assert_array_equal(np.concatenate(blocks), trained.read_packed([2, 0, 1]))


def test_every_backing_answers_the_interface_alike(trained, bank, monkeypatch) -> None:
    """Products, subset sums, rows and counts are the same whether the masks are held on the
    host, held as tensors (the device path, here on the CPU) or read from the store in blocks."""
    monkeypatch.setattr("supsup_cli.store.layout.READ_SLAB_BYTES", 1)  # one mask per block
    shared = {f.name: getattr(bank, f.name) for f in fields(MaskBank)}
    device = DeviceMaskBank(
        **shared, packed=bank.packed, packed_on_device=torch.from_numpy(bank.packed)
    )
    streamed = MaskBank.from_store(trained, stream=True)
    generator = torch.Generator().manual_seed(7)
    vector = torch.randn(bank.mask_bits, generator=generator)
    matrix = torch.randn(bank.mask_bits, 6, generator=generator)
    rows = np.array([2, 0])
    for other in (device, streamed):
        assert other.task_count == bank.task_count == 3
        for product in (vector, matrix):
            for picked in (None, rows):
                expected = bank.products(product, picked)
                assert expected.shape[0] == (3 if picked is None else 2)
                # Sums of D terms in another order: rounding grows with Σ|terms|.
                tolerance = 1e-6 * float(product.abs().sum(0).max())
                got = other.products(product, picked)
                torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)
        torch.testing.assert_close(other.subset_sum(rows), bank.subset_sum(rows))
        np.testing.assert_array_equal(other.packed_row(1), trained.read_packed([1])[0])
    # A subset sum is the sum of its rows' bits.
    expected = trained.read_mask(2).astype(np.float32) + trained.read_mask(0)
    np.testing.assert_array_equal(bank.subset_sum(rows).numpy(), expected)


def test_the_factory_holds_masks_on_the_host_for_the_cpu(trained) -> None:
    held = MaskBank.from_packed(trained.net, trained.read_packed(), [TEN] * 3)
    assert isinstance(held, HostMaskBank) and held.device.type == "cpu"
    assert isinstance(MaskBank.from_store(trained), HostMaskBank)
    with pytest.raises(TypeError):
        MaskBank(  # the interface alone holds no masks
            config=held.config,
            net=held.net,
            counts=held.counts,
            task_classes=held.task_classes,
            device=held.device,
        )


@pytest.mark.parametrize("objective", ["H", "G"])
def test_per_image_gradients_are_one_backwards_outer_products(objective: str) -> None:
    """Blocks of the batched outer-product gradients (starts at bytes, ragged layer edges)
    equal the per-example vmap gradients."""
    net = build_net(CONFIG_G)
    mean = torch.from_numpy(random_bits(3, CONFIG_G.mask_bits, seed=4).mean(0, dtype=np.float32))
    x = torch.randn(5, 784, generator=torch.Generator().manual_seed(2))
    chosen, superfluous = objectives.get_objective(objective), torch.arange(10, 20)
    expected = objectives.per_example_mask_gradients(net, mean, x, chosen, superfluous)  # (n, D)
    blocks = list(
        objectives.per_example_gradient_blocks(net, mean, x, chosen, superfluous, 5 * 7000)
    )
    starts = [start for start, _ in blocks]
    assert len(blocks) > 3 and all(start % 8 == 0 for start in starts)
    assert starts == [sum(len(b) for _, b in blocks[:i]) for i in range(len(blocks))]
    got = torch.cat([block for _, block in blocks])  # (D, n)
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(got, expected.T, rtol=1e-5, atol=1e-6 * scale)


def test_per_image_answers_equal_the_per_example_form(bank, monkeypatch) -> None:
    """The streamed outer-product products choose the task the per-example (vmap) gradients'
    products choose, for every image, whether the masks are held on the host or as tensors."""
    x = torch.cat([images(f"permuted:{t}", 8, start=500)[0] for t in (1, 2, 3)])
    mean, entropy = bank.mean_mask(), objectives.get_objective("H")
    gradients = objectives.per_example_mask_gradients(bank.net, mean, x, entropy)  # (n, D)
    expected = bank.products(gradients.T.contiguous())  # (k, n)
    shared = {f.name: getattr(bank, f.name) for f in fields(MaskBank)}
    device = DeviceMaskBank(
        **shared, packed=bank.packed, packed_on_device=torch.from_numpy(bank.packed)
    )
    monkeypatch.setattr("supsup_cli.learn.objectives.HOST_GRADIENT_BLOCK_FLOATS", 24 * 50_000)
    for backing in (bank, device):
        result = infer_task(backing, x, per="image")
        assert result.tasks.tolist() == expected.argmin(0).tolist()
        blocks = objectives.per_example_gradient_blocks(backing.net, mean, x, entropy)
        got = backing.block_products(blocks, len(x))
        tolerance = 1e-5 * float(gradients.abs().sum(1).max())
        torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)
