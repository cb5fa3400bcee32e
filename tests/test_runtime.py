"""Runtimes, batching, no repeated work and multi-scale: same descriptors, less work."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import cbir.backbones  # noqa: E402
from cbir.cache import load_entry, load_entry_array  # noqa: E402
from cbir.data import Dataset, Query, load_dataset  # noqa: E402
from cbir.extraction import REGIONS_FILE, ensure_descriptors, extract  # noqa: E402
from cbir.method import POOLINGS, Method  # noqa: E402
from cbir.multiscale import describe_scales  # noqa: E402
from cbir.pooling import l2n, pool  # noqa: E402
from cbir.runtime import OpenVINOForward, TorchForward, check_runtime, default_runtime  # noqa: E402
from synthetic import landmark_image, make_class_folder, record_model_inputs, write_jpeg  # noqa: E402

needs_openvino = pytest.mark.skipif(default_runtime("cpu") != "openvino",
                                    reason="openvino is not installed (pip install -r requirements-extract.txt)")


def run(dataset, methods, cache, **options):
    return extract(dataset, methods, cache, **({"workers": 0, "threads": 1, "runtime": "torch"} | options))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def aspect_ratios(tmp_path_factory) -> Dataset:
    """Landmark-like photos of several aspect ratios (wide, tall, square, panoramic) and two
    cropped queries, at sizes that the 160 px policy downscales."""
    root = tmp_path_factory.mktemp("aspects")
    rng = np.random.default_rng(3)
    sizes = [(320, 240), (240, 320), (256, 256), (400, 180), (300, 225), (180, 360)]
    names = []
    for i, size in enumerate(sizes):
        write_jpeg(root / f"im{i}.jpg", landmark_image(i % 3, size, rng))
        names.append(f"im{i}")
    return Dataset(name="folder", root=str(root), images=names, paths=[n + ".jpg" for n in names],
                   labels=["a", "b", "c", "a", "b", "c"],
                   queries=[Query("im0", 0, "im0.jpg", (40.0, 30.0, 250.0, 200.0)),
                            Query("im3", 3, "im3.jpg", (10.0, 10.0, 300.0, 170.0))],
                   gnd={"class": [{"ok": np.array([0]), "junk": np.array([], np.int64)}] * 2},
                   n_images_total=6, n_queries_total=2)


def lite(pooling: str, size: int = 160, **kw) -> Method:
    return Method(backbone="tf_efficientnet_lite0", pooling=pooling, size=size, **kw)


# --- the runtime --------------------------------------------------------------------

@needs_openvino
def test_openvino_fp32_gives_torch_descriptors_for_every_pooling(aspect_ratios, tmp_path):
    methods = [lite(p) for p in POOLINGS]
    ref = run(aspect_ratios, methods, tmp_path / "torch")
    ov = run(aspect_ratios, methods, tmp_path / "ov", runtime="openvino")
    for m in methods:
        assert ov[m].manifest["runtime"].startswith("openvino") and ov[m].manifest["precision"] == "float32"
        for a, b in ((ref[m].db, ov[m].db), (ref[m].queries, ov[m].queries)):
            assert cosines(a, b).min() >= 0.9999, (m.pooling, cosines(a, b).min())


@needs_openvino
def test_converted_model_is_stored_once_with_its_conversion_time(aspect_ratios, tmp_path):
    first = run(aspect_ratios, [lite("mac")], tmp_path, runtime="openvino")[lite("mac")]
    conversion = first.manifest["conversion"]
    assert conversion["conversion_cached"] is False and conversion["conversion_seconds"] > 0
    assert (tmp_path / ".models" / conversion["model_file"]).is_file()
    again = run(aspect_ratios, [lite("spoc")], tmp_path, runtime="openvino")[lite("spoc")]
    assert again.manifest["conversion"]["conversion_cached"] is True
    assert again.manifest["conversion"]["model_file"] == conversion["model_file"]
    other_size = run(aspect_ratios, [lite("mac", size=128)], tmp_path, runtime="openvino")[lite("mac", size=128)]
    assert other_size.manifest["conversion"]["model_file"] != conversion["model_file"]


@needs_openvino
def test_each_runtime_gets_its_input_layout_and_torch_pools_on_one_thread_beside_openvino(aspect_ratios, tmp_path,
                                                                                      monkeypatch):
    seen = {"torch": set(), "openvino": set()}
    for name, cls in (("torch", TorchForward), ("openvino", OpenVINOForward)):
        def recording(self, x, original=cls.__call__, name=name):
            forward_threads = self.compiled.get_property("INFERENCE_NUM_THREADS") if name == "openvino" else None
            seen[name].add((torch.get_num_threads(), forward_threads, x.is_contiguous(),
                            x.is_contiguous(memory_format=torch.channels_last)))
            return original(self, x)
        monkeypatch.setattr(cls, "__call__", recording)
    run(aspect_ratios, [lite("mac")], tmp_path / "ov", runtime="openvino", threads=2)
    run(aspect_ratios, [lite("mac")], tmp_path / "torch", threads=2)
    # OpenVINO runs the forward on the 2 threads and reads NCHW; torch only pools, on one thread.
    assert seen["openvino"] == {(1, 2, True, False)}
    assert seen["torch"] == {(2, None, False, True)}  # torch's forward takes the threads, channels-last


def small_forward(tmp_path, monkeypatch, gain: float, cap: int = 2):
    """Lite0 (random weights) on OpenVINO where a shape earns its own model on its third call;
    `gain` is what the probe asks of it (-1: kept whatever it measures, 1: never kept)."""
    monkeypatch.setattr(OpenVINOForward, "STATIC_AFTER_SECONDS", 1e-9)
    monkeypatch.setattr(OpenVINOForward, "MAX_STATIC_SHAPES", cap)
    monkeypatch.setattr(OpenVINOForward, "STATIC_GAIN", gain)
    return OpenVINOForward(cbir.backbones.load_backbone("tf_efficientnet_lite0", "random"), tmp_path, 128, threads=1)


def three_shapes():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(1, 3, h, w, generator=generator) for h, w in ((96, 128), (128, 96), (112, 112))]


@needs_openvino
def test_a_shape_the_dynamic_model_spent_long_on_gets_its_own_compiled_model_up_to_a_cap(tmp_path, monkeypatch):
    forward = small_forward(tmp_path, monkeypatch, gain=-1.0)
    wide, tall, square = three_shapes()
    with torch.inference_mode():
        dynamic = [forward(wide), forward(wide)]
        assert forward.static_requests == {}  # two dynamic calls first
        static = forward(wide)
        assert list(forward.static_requests) == [(1, 3, 96, 128)]
        assert np.array_equal(forward.static_requests[(1, 3, 96, 128)].get_output_tensor(0).data, static.numpy())
        torch.testing.assert_close(static, dynamic[0], rtol=0, atol=1e-5)
        for x in (wide, wide, tall, tall, tall, square, square, square):
            forward(x)
    assert list(forward.static_requests) == [(1, 3, 96, 128), (1, 3, 128, 96)]  # the square one is past the cap
    assert forward.info["shape_models"] == {"shapes": [[1, 3, 96, 128], [1, 3, 128, 96]],
                                            "dropped_not_faster": False}


@needs_openvino
def test_per_shape_models_that_are_not_faster_are_dropped_after_the_probe(tmp_path, monkeypatch):
    forward = small_forward(tmp_path, monkeypatch, gain=1.0)  # no model is 100% faster: the probe fails
    wide, tall, _ = three_shapes()
    with torch.inference_mode():
        for _ in range(2 + OpenVINOForward.PROBE_CALLS - 1):
            forward(wide)
        assert list(forward.static_requests) == [(1, 3, 96, 128)] and forward.static_pays is None
        probed = forward(wide)
        assert forward.static_requests == {} and forward.static_pays is False
        torch.testing.assert_close(forward(wide), probed, rtol=0, atol=1e-5)  # the dynamic model again
        for _ in range(4):
            forward(tall)
    assert forward.static_requests == {} and forward.dynamic_times[(1, 3, 96, 128)].calls == 3
    assert forward.info["shape_models"] == {"shapes": [], "dropped_not_faster": True}


@needs_openvino
def test_extraction_on_per_shape_compiled_models_gives_the_dynamic_models_descriptors(tmp_path, monkeypatch):
    root = make_class_folder(tmp_path / "folder", per_class=3, size=(200, 150))
    dataset = load_dataset("folder", root)
    methods = [lite(p) for p in POOLINGS]
    monkeypatch.setattr(OpenVINOForward, "STATIC_AFTER_SECONDS", float("inf"))
    dynamic = run(dataset, methods, tmp_path / "dynamic", runtime="openvino", batch_pixels=1)  # one image a call
    monkeypatch.setattr(OpenVINOForward, "STATIC_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(OpenVINOForward, "STATIC_GAIN", -1.0)
    static = run(dataset, methods, tmp_path / "static", runtime="openvino", batch_pixels=1)
    assert dynamic[methods[0]].manifest["shape_models"]["shapes"] == []
    assert static[methods[0]].manifest["shape_models"]["shapes"] == [[1, 3, 120, 160]]  # 7 of 9 images on it
    for m in methods:
        for a, b in ((dynamic[m].db, static[m].db), (dynamic[m].queries, static[m].queries)):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


CONVERTED_EXTRACTION = """
import sys
sys.modules["timm"] = None  # importing timm now fails: the converted model must be enough
from pathlib import Path
import numpy as np
from cbir.cache import load_entry
from cbir.extraction import extract
from cbir.method import Method
import pickle
dataset = pickle.loads(Path(sys.argv[1]).read_bytes())
method = Method(backbone="tf_efficientnet_lite0", pooling=sys.argv[3], size=160)
entry = extract(dataset, [method], Path(sys.argv[2]), workers=0, threads=1, runtime="openvino")[method]
np.save(sys.argv[4], np.asarray(entry.db, np.float32))
"""


@needs_openvino
def test_an_extraction_with_a_converted_model_needs_neither_timm_nor_the_torch_network(aspect_ratios, tmp_path):
    import pickle
    import subprocess
    import sys
    from pathlib import Path

    first = run(aspect_ratios, [lite("mac"), lite("gem")], tmp_path / "cache", runtime="openvino")
    (tmp_path / "dataset.pkl").write_bytes(pickle.dumps(aspect_ratios))
    other = tmp_path / "other"
    (other / ".models").mkdir(parents=True)
    for file in (tmp_path / "cache" / ".models").iterdir():
        (other / ".models" / file.name).write_bytes(file.read_bytes())
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", CONVERTED_EXTRACTION, str(tmp_path / "dataset.pkl"), str(other),
                           "gem", str(tmp_path / "gem.npy")], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": f"{root}:{root / 'tests'}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.array_equal(np.load(tmp_path / "gem.npy"), np.asarray(first[lite("gem")].db, np.float32))
    described = load_entry(other, aspect_ratios, lite("gem")).manifest
    for field in ("backbone", "weights_sha256", "weights_source"):
        assert described[field] == first[lite("gem")].manifest[field], field


@needs_openvino
def test_a_model_converted_before_its_json_described_the_backbone_is_described_on_its_next_use(aspect_ratios,
                                                                                            tmp_path):
    import json

    from cbir.runtime import described_backbone

    first = run(aspect_ratios, [lite("mac")], tmp_path, runtime="openvino")[lite("mac")]
    about = (tmp_path / ".models" / first.manifest["conversion"]["model_file"]).with_suffix(".json")
    info = json.loads(about.read_text())
    del info["backbone"]
    about.write_text(json.dumps(info))
    assert described_backbone("tf_efficientnet_lite0", "imagenet", None, tmp_path, 160) is None
    again = run(aspect_ratios, [lite("spoc")], tmp_path, runtime="openvino")[lite("spoc")]
    assert again.manifest["conversion"]["conversion_cached"] is True  # reused, not converted again
    described = described_backbone("tf_efficientnet_lite0", "imagenet", None, tmp_path, 160)
    assert described is not None and described.weights_sha256 == first.manifest["weights_sha256"]


@needs_openvino
@pytest.mark.parametrize("name", ["vgg16", "resnet50", "efficientnet_b1", "tf_efficientnet_lite0",
                                  "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_every_backbone_converts_and_matches_torch(name, tmp_path):
    """Random weights where ImageNet ones are not offline; VGG-16 is its conv5 cut."""
    backbone = cbir.backbones.load_backbone(name, "random")
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = TorchForward(backbone, torch.device("cpu"))(x)
        got = OpenVINOForward(backbone, tmp_path, 128, threads=1)(x)
    assert got.shape == ref.shape
    for pooling in ("mac", "gem"):
        assert cosines(pool(ref, pooling).numpy(), pool(got, pooling).numpy()).min() >= 0.9999


def test_bf16_is_named_in_the_label_and_cache_key_and_fp32_keys_are_unchanged():
    assert lite("rmac", 1024).slug() == "tf_efficientnet_lite0-rmac-1024-imagenet-none"
    assert lite("rmac", 1024).label() == "Lite0 R-MAC"
    bf16 = lite("rmac", 1024, precision="bf16")
    assert bf16.slug() == "tf_efficientnet_lite0-rmac-1024-imagenet-none-bf16" and "[bf16]" in bf16.label()
    assert bf16.descriptor_key() == bf16.with_rerank("diffusion").descriptor_key() != lite("rmac", 1024)
    with pytest.raises(ValueError, match="precision"):
        lite("mac", precision="fp8")


def test_runtime_choice_errors_are_clear():
    with pytest.raises(ValueError, match="unknown runtime"):
        check_runtime("onnx", "cpu")
    with pytest.raises(ValueError, match="runs on the CPU"):
        check_runtime("openvino", "cuda")
    assert default_runtime("cuda") == "torch"


@needs_openvino
def test_bf16_extraction_is_a_separate_entry_close_to_fp32(aspect_ratios, tmp_path):
    fp32 = run(aspect_ratios, [lite("gem")], tmp_path, runtime="openvino")[lite("gem")]
    bf16_method = lite("gem", precision="bf16")
    bf16 = run(aspect_ratios, [bf16_method], tmp_path, runtime="openvino")[bf16_method]
    assert bf16.path != fp32.path and bf16.manifest["precision"] == "bfloat16 inference"
    assert cosines(fp32.db, bf16.db).min() > 0.98


# --- batching and no repeated work -----------------------------------------------------

def test_batches_give_the_descriptors_of_batch_one(tmp_path, monkeypatch):
    root = make_class_folder(tmp_path / "small", per_class=5, size=(64, 48))
    dataset = load_dataset("folder", root)
    methods = [Method(backbone="tf_efficientnet_lite0", pooling=p, size=64, weights="random") for p in POOLINGS]
    shapes = record_model_inputs(monkeypatch)
    batched = run(dataset, methods, tmp_path / "batched")
    assert max(s[0] for s in shapes) == len(dataset.images)  # one batch of the 15 equal-size images
    shapes.clear()
    single = run(dataset, methods, tmp_path / "single", batch_pixels=1)
    assert {s[0] for s in shapes} == {1}
    for m in methods:
        assert np.allclose(batched[m].db, single[m].db, atol=1e-5)
        assert np.allclose(batched[m].queries, single[m].queries, atol=1e-5)
    rmac = Method(backbone="tf_efficientnet_lite0", pooling="rmac", size=64, weights="random")
    sample = load_entry_array(batched[rmac], REGIONS_FILE)  # each image's own regions, batch or not
    assert len(sample) >= len(dataset.images) and np.allclose(sample, load_entry_array(single[rmac], REGIONS_FILE),
                                                              atol=1e-5)


def test_a_chunk_describer_is_freed_without_the_garbage_collector():
    """Tensors owned by a reference cycle can be freed by Python's collector while torch still
    holds them (pytorch#75932): with the describer in a cycle (its poolers closing over it) a
    test process crashed in the tuple free list."""
    import gc
    import weakref

    from cbir.chunks import ChunkDescriber
    from cbir.extraction import Head

    backbone = cbir.backbones.load_backbone("tf_efficientnet_lite0", "random")
    heads = [Head(Method(pooling=p, size=64, weights="random"), None, p == "rmac") for p in POOLINGS]
    describer = ChunkDescriber(heads, backbone, TorchForward(backbone, torch.device("cpu")), torch.device("cpu"),
                               batch_pixels=1, region_quota=4, n_db=1)
    gc.disable()
    try:
        with torch.inference_mode():
            assert describer.add(0, torch.zeros(3, 48, 64, dtype=torch.uint8), True) == 1
        freed = weakref.ref(describer)
        del describer
        assert freed() is None
    finally:
        gc.enable()


def test_a_released_batch_is_the_stacked_pixels_channels_last_and_one_image_is_not_copied():
    from cbir.batching import SizeBatcher
    from cbir.extraction import pixels

    rng = np.random.default_rng(0)
    decoded = [pixels(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)) for _ in range(3)]
    (indices, batch), = SizeBatcher(max_pixels=6 * 8).add(0, decoded[0])  # full at one image
    assert indices == [0] and batch.data_ptr() == decoded[0].data_ptr()  # one image: a view, no copy
    batcher = SizeBatcher()
    for i, image in enumerate(decoded):
        batcher.add(i, image)
    (indices, batch), = batcher.flush()
    assert indices == [0, 1, 2] and torch.equal(batch, torch.stack(decoded))
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_batches_respect_the_memory_bound(tmp_path, monkeypatch):
    root = make_class_folder(tmp_path / "small", per_class=5, size=(64, 48))
    shapes = record_model_inputs(monkeypatch)
    run(load_dataset("folder", root), [Method(pooling="mac", size=64, weights="random")], tmp_path / "c",
        batch_pixels=4 * 64 * 48)
    assert max(s[0] for s in shapes) == 4 and sum(s[0] for s in shapes) == 15


def test_folder_whose_queries_are_its_images_runs_the_model_once_per_image(tmp_path, monkeypatch):
    dataset = load_dataset("folder", make_class_folder(tmp_path / "coil", per_class=4))
    assert len(dataset.queries) == len(dataset.images)
    shapes = record_model_inputs(monkeypatch)
    entry = run(dataset, [Method(pooling="spoc", size=64, weights="random")], tmp_path / "c")[
        Method(pooling="spoc", size=64, weights="random")]
    assert sum(s[0] for s in shapes) == len(dataset.images)
    rows = [q.index for q in dataset.queries]
    assert np.array_equal(entry.queries, entry.db[rows])


def test_cold_evaluate_of_one_pooling_caches_all_four_in_that_pass(tmp_path, monkeypatch):
    dataset = load_dataset("folder", make_class_folder(tmp_path / "f", per_class=3))
    shapes = record_model_inputs(monkeypatch)
    method = Method(pooling="gem", size=64, weights="random").with_rerank("diffusion")
    ensure_descriptors(dataset, method, tmp_path / "c", workers=0, threads=1, runtime="torch")
    assert sum(s[0] for s in shapes) == len(dataset.images)
    for p in POOLINGS:
        load_entry(tmp_path / "c", dataset, Method(pooling=p, size=64, weights="random"))


# --- multi-scale -----------------------------------------------------------------------

def test_single_scale_one_is_todays_descriptor(aspect_ratios, tmp_path):
    today = run(aspect_ratios, [lite("rmac"), lite("gem")], tmp_path / "a")
    explicit = [lite("rmac", scales=[1]), lite("gem", scales=(1.0,))]
    assert [m.slug() for m in explicit] == [lite("rmac").slug(), lite("gem").slug()]
    again = run(aspect_ratios, explicit, tmp_path / "b")
    for m in explicit:
        assert np.array_equal(today[m].db, again[m].db) and np.array_equal(today[m].queries, again[m].queries)


def test_multiscale_is_cnnimageretrieval_extract_ms():
    """A direct transcription of cnnimageretrieval's `extract_ms`: v = sum_s pool(net(resize(x, s)))^p,
    v /= |scales|, v = v^(1/p), L2; p = 3 for GeM, 1 otherwise."""
    backbone = cbir.backbones.load_backbone("tf_efficientnet_lite0", "random")
    x = torch.rand(1, 3, 120, 160, generator=torch.Generator().manual_seed(1))
    scales = (1.0, 0.7071, 0.5)
    calls = []

    def forward(t):
        calls.append(tuple(t.shape))
        return backbone.model(t)

    poolers = [(p, lambda f, p=p: pool(f, p)) for p in POOLINGS]
    with torch.inference_mode():
        got, _ = describe_scales(x, scales, forward, poolers)
        for (name, _), desc in zip(poolers, got):
            p = 3.0 if name == "gem" else 1.0
            v = torch.zeros_like(desc)
            for s in scales:
                t = x if s == 1 else torch.nn.functional.interpolate(x, scale_factor=s, mode="bilinear",
                                                                     align_corners=False)
                v += pool(backbone.model(t), name).pow(p)
            expected = l2n((v / len(scales)).pow(1.0 / p))
            assert torch.allclose(desc, expected, atol=1e-6), name
    assert calls == [(1, 3, 120, 160), (1, 3, 84, 113), (1, 3, 60, 80)]  # one forward per scale, all poolings


def test_multiscale_is_its_own_cache_entry(aspect_ratios, tmp_path):
    multi = lite("mac", scales=(1, 0.7071, 0.5))
    assert multi.slug() == "tf_efficientnet_lite0-mac-160-imagenet-none-ms1_0.7071_0.5"
    assert "ms(1,0.7071,0.5)" in multi.label() and Method.from_dict(multi.to_dict()) == multi
    entries = run(aspect_ratios, [multi, lite("mac")], tmp_path)
    assert entries[multi].path != entries[lite("mac")].path
    c = cosines(entries[multi].db, entries[lite("mac")].db)
    assert 0.8 < c.min() and c.max() < 1 - 1e-4  # related, not the same


def test_multiscale_rmac_keeps_the_regional_sample_of_scale_one(aspect_ratios, tmp_path):
    """The whitening sample is of the scale-1 map, not of the last scale the R-MAC heads saw."""
    multi = lite("rmac", scales=(1, 0.7071, 0.5))
    entries = run(aspect_ratios, [multi], tmp_path / "multi") | run(aspect_ratios, [lite("rmac")], tmp_path / "one")
    sample = load_entry_array(entries[multi], REGIONS_FILE)
    assert len(sample) >= len(aspect_ratios.images)
    assert np.array_equal(sample, load_entry_array(entries[lite("rmac")], REGIONS_FILE))


# --- an upload described without torch --------------------------------------------------

def test_numpy_pooling_equals_torch_pooling_for_every_pooling():
    from cbir import torchfree
    from cbir.pooling import rmac
    from cbir.whitening import learn_whitening

    rng = np.random.default_rng(0)
    whitening = learn_whitening(rng.random((200, 16), np.float32), power=0.5, learned_on="x")
    for h, w in ((7, 12), (12, 7), (9, 5), (3, 3)):
        fmap = np.maximum(rng.standard_normal((16, h, w)).astype(np.float32), 0)
        for p in POOLINGS:
            expected = pool(torch.from_numpy(fmap[None]), p)[0].numpy()
            assert np.allclose(torchfree.pool(fmap, p), expected, atol=1e-6), (p, h, w)
        whitened = rmac(torch.from_numpy(fmap[None]), whitening=whitening)[0].numpy()
        assert np.allclose(torchfree.pool(fmap, "rmac", whitening), whitened, atol=1e-5)


TORCHLESS_UPLOAD = """
import sys
sys.modules["torch"] = sys.modules["timm"] = None  # importing either now fails
from pathlib import Path
import numpy as np
from cbir import torchfree
from cbir.cache import list_datasets, load_entry
from cbir.extraction import entry_whitening
from cbir.method import Method
bundle = Path(sys.argv[1])
dataset = next(iter(list_datasets(bundle).values()))
query = dataset.queries[2]
for pooling in ("rmac", "gem"):
    for whitening, scales in (("none", (1.0,)), ("pca-partial", (1.0,)), ("none", (1.0, 0.7071, 0.5))):
        method = Method(pooling=pooling, size=64, whitening=whitening, scales=scales)
        entry = load_entry(bundle, dataset, method)
        assert torchfree.can_describe(method, entry)
        got = torchfree.describe_image(Path(sys.argv[2]) / query.path, method, entry, query.bbox,
                                       entry_whitening(entry))
        print(pooling, whitening, float(np.abs(got[0] - entry.queries[2].astype(np.float32)).max()))
"""


@needs_openvino
def test_bundle_carries_the_converted_model_and_an_upload_is_described_without_torch(tmp_path):
    import subprocess
    import sys
    from dataclasses import replace
    from pathlib import Path

    from cbir.bundle import build_bundle, verify_bundle
    from dashboard_fixture import make_dataset

    dataset = make_dataset(tmp_path / "data")
    methods = [Method(pooling="rmac", size=64), Method(pooling="gem", size=64)]
    multiscale = [replace(m, scales=(1.0, 0.7071, 0.5)) for m in methods]
    cache = tmp_path / "cache"
    run(dataset, methods, cache, runtime="openvino")
    run(dataset, multiscale, cache, runtime="openvino")
    run(dataset, [replace(m, whitening="pca-partial") for m in methods], cache, runtime="openvino")
    out = tmp_path / "bundle"
    build_bundle(cache, dataset, methods + multiscale + [replace(m, whitening="pca-partial") for m in methods],
                 out, layouts=False, grid_protocols=())
    assert any(name.startswith(".models/") and name.endswith(".bin") for name in verify_bundle(out)["files"])
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", TORCHLESS_UPLOAD, str(out), dataset.root], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [float(line.split()[-1]) for line in done.stdout.splitlines()]
    assert len(errors) == 6 and max(errors) < 2e-3  # the bundle stores float16


def test_numpy_bilinear_resize_equals_torch_interpolate():
    from cbir import torchfree

    rng = np.random.default_rng(1)
    for h, w in ((120, 160), (77, 51), (9, 13)):
        x = rng.standard_normal((3, h, w)).astype(np.float32)
        for factor in (0.7071, 0.5, 0.33):
            expected = torch.nn.functional.interpolate(torch.from_numpy(x[None]), scale_factor=factor,
                                                       mode="bilinear", align_corners=False)[0].numpy()
            got = torchfree.bilinear_scaled(x, factor)
            assert got.shape == expected.shape, (h, w, factor)
            assert np.abs(got - expected).max() < 1e-5, (h, w, factor)
