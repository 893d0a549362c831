"""``build_pretrained_model(..., pretrained=...)``: ImageNet weights by name (downloaded from ``file://`` URLs to files
written here, verified, converted once and cached), offline errors, and local files in torchvision,
Microsoft and Hugging Face layouts loading into the right model with the file's values."""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

import segbench.checkpoints.load as pretrained
from segbench import build_encoder, build_model, build_pretrained_model
from segbench.models.registry import ENCODERS
from segbench.checkpoints.load import HashMismatchError, ImageNetWeights, WeightsUnavailableError

SWIN_ENCODER = dict(embed_dim=8, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4))
SWIN = dict(SWIN_ENCODER, channels=16, aux_channels=8, drop_path_rate=0.0)
MIT_ENCODER = dict(embed_dims=[8, 16, 24, 32], depths=[1, 2, 1, 1], num_heads=[1, 1, 2, 2])
MIT = dict(MIT_ENCODER, decoder_dim=16, drop_path_rate=0.0)


def _random(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Random values everywhere (BN statistics positive), so a tensor left at its initialisation shows."""
    return {k: (torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v))
            if v.is_floating_point() else v.clone() for k, v in state.items()}  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SEGBENCH_OFFLINE", raising=False)
    return tmp_path / "home" / "weights"


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A file in torchvision's ``resnet18`` layout: the trunk's keys plus the 1000-class ``fc`` (read-only:
    a test that changes it works on a copy)."""
    state = _random(build_encoder("resnet18").state_dict())
    state |= {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    path = tmp_path_factory.mktemp("published") / "resnet18-test.pth"
    torch.save(state, path)
    return path, state


def _publish(monkeypatch, encoder: str, path_or_url: Path | str, sha256: str | None) -> ImageNetWeights:
    url = path_or_url.as_uri() if isinstance(path_or_url, Path) else path_or_url
    entry = ImageNetWeights(url, f"{encoder}-test.pth", sha256, "torchvision", "test file")
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, encoder, entry)
    return entry


def _no_download(*args, **kwargs):
    raise AssertionError("download attempted although the weights are cached")


# ---- download, verification, cache -------------------------------------------------------------------


@pytest.mark.parametrize("digits", [8, 64], ids=["prefix", "full"])
def test_imagenet_is_downloaded_verified_cached_and_loaded(cache, monkeypatch, torchvision_resnet18, digits):
    path, state = torchvision_resnet18
    entry = _publish(monkeypatch, "resnet18", path, _sha256(path)[:digits])
    model = build_pretrained_model("fcn", 3, encoder="resnet18", pretrained="imagenet")
    assert sorted(p.name for p in cache.iterdir()) == ["resnet18-test.pth", "resnet18.segbench.pt"]
    assert _sha256(cache / "resnet18-test.pth") == _sha256(path)
    for key, value in model.encoder.state_dict().items():  # the file's values, exactly
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    report = model.pretrained_report
    assert report.url == entry.url and report.sha256 == _sha256(path)
    assert ("full SHA-256" if digits == 64 else f"published prefix {entry.sha256}") in report.verification
    assert report.skipped == ["fc.weight", "fc.bias"] and not report.adapted
    assert len(report.loaded) == len(state) - 2 and all(k.startswith("encoder.") for k in report.loaded)
    assert "classifier.weight" in report.missing and not any(k.startswith("encoder.") for k in report.missing)
    text = str(report)
    assert "ImageNet resnet18" in text and "loaded 120 tensors" in text and "skipped 2" in text and "fc.weight" in text


def test_second_build_reads_the_cache_without_downloading(cache, monkeypatch, tmp_path, torchvision_resnet18):
    published, state = torchvision_resnet18
    path = tmp_path / published.name
    shutil.copyfile(published, path)
    _publish(monkeypatch, "resnet18", path, _sha256(path)[:8])
    build_pretrained_model("pspnet", 2, encoder="resnet18", pretrained="imagenet")
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    path.unlink()  # the publisher is gone too
    model = build_pretrained_model("pspnet", 2, encoder="resnet18", pretrained="imagenet")
    torch.testing.assert_close(model.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"], rtol=0, atol=0)
    (cache / "resnet18.segbench.pt").unlink()  # the published file alone is converted again, still offline
    model = build_pretrained_model("deeplabv3", 2, encoder="resnet18", pretrained="imagenet")
    torch.testing.assert_close(model.encoder.conv1.weight, state["conv1.weight"], rtol=0, atol=0)
    assert (cache / "resnet18.segbench.pt").is_file()


def test_hash_mismatch_names_both_digests_and_the_url_and_leaves_nothing(cache, monkeypatch, torchvision_resnet18):
    path, _ = torchvision_resnet18
    entry = _publish(monkeypatch, "resnet18", path, "0" * 64)
    with pytest.raises(HashMismatchError) as error:
        build_pretrained_model("fcn", 3, encoder="resnet18", pretrained="imagenet")
    message = str(error.value)
    assert "0" * 64 in message and _sha256(path) in message and entry.url in message
    assert list(cache.iterdir()) == []  # no file, no partial download


def test_corrupt_file_put_in_the_cache_by_hand_is_refused(cache, monkeypatch, torchvision_resnet18):
    path, _ = torchvision_resnet18
    _publish(monkeypatch, "resnet18", path, _sha256(path)[:8])
    cache.mkdir(parents=True)
    (cache / "resnet18-test.pth").write_bytes(b"truncated")
    with pytest.raises(HashMismatchError, match=re.escape(str(cache / "resnet18-test.pth"))):
        build_pretrained_model("fcn", 3, encoder="resnet18", pretrained="imagenet")


def test_unreachable_server_fails_fast_saying_what_to_download_and_where(cache, monkeypatch):
    url = "http://127.0.0.1:9/resnet18-test.pth"  # the discard port: nothing listens
    _publish(monkeypatch, "resnet18", url, "abcdef12")
    monkeypatch.setenv("SEGBENCH_DOWNLOAD_TIMEOUT", "2")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as error:
        build_pretrained_model("fcn", 3, encoder="resnet18", pretrained="imagenet")
    assert time.monotonic() - start < 15
    message = str(error.value)
    assert url in message and str(cache / "resnet18-test.pth") in message and "pretrained='/path/to/" in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_server_that_never_answers_times_out(cache, monkeypatch):
    with socket.socket() as server:  # accepts connections (the kernel's backlog) but never sends a byte
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/resnet18-test.pth"
        _publish(monkeypatch, "resnet18", url, "abcdef12")
        monkeypatch.setenv("SEGBENCH_DOWNLOAD_TIMEOUT", "1")
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match="timed out"):
            build_pretrained_model("fcn", 3, encoder="resnet18", pretrained="imagenet")
    assert time.monotonic() - start < 15
    assert list(cache.iterdir()) == []  # the partial download is gone


def test_offline_switch_does_not_touch_the_network(cache, monkeypatch, torchvision_resnet18):
    path, _ = torchvision_resnet18
    _publish(monkeypatch, "resnet18", path, None)
    monkeypatch.setenv("SEGBENCH_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    with pytest.raises(WeightsUnavailableError, match="SEGBENCH_OFFLINE"):
        build_pretrained_model("fcn", 3, encoder="resnet18", pretrained="imagenet")


def test_unchecked_row_loads_and_says_so(cache, monkeypatch, torchvision_resnet18):
    path, _ = torchvision_resnet18
    _publish(monkeypatch, "resnet18", path, None)
    report = build_pretrained_model("fcn", 3, encoder="resnet18", pretrained="imagenet").pretrained_report
    assert report.verification.startswith("unchecked") and report.sha256 == _sha256(path)


def test_bad_timeout_setting_is_explained(cache, monkeypatch, torchvision_resnet18):
    path, _ = torchvision_resnet18
    _publish(monkeypatch, "resnet18", path, None)
    monkeypatch.setenv("SEGBENCH_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="SEGBENCH_DOWNLOAD_TIMEOUT"):
        build_pretrained_model("fcn", 3, encoder="resnet18", pretrained="imagenet")


# ---- heads and input channels ------------------------------------------------------------------------


def test_other_input_channels_adapt_the_first_conv(cache, monkeypatch, torchvision_resnet18):
    path, state = torchvision_resnet18
    _publish(monkeypatch, "resnet18", path, _sha256(path)[:8])
    model = build_pretrained_model("fcn", 3, in_channels=1, encoder="resnet18", pretrained="imagenet")
    torch.testing.assert_close(model.encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert model.pretrained_report.adapted == ["encoder.conv1.weight"]
    assert model(torch.randn(1, 1, 33, 33)).shape == (1, 3, 33, 33)


# torchvision's ImageNet classifiers, as its mobilenet_v3_* and efficientnet_b* files hold them next to features.*
IMAGENET_CLASSIFIERS = {
    "mobilenet_v3_large": {"classifier.0.weight": (1280, 960), "classifier.0.bias": (1280,),
                           "classifier.3.weight": (1000, 1280), "classifier.3.bias": (1000,)},
    "mobilenet_v3_small": {"classifier.0.weight": (1024, 576), "classifier.0.bias": (1024,),
                           "classifier.3.weight": (1000, 1024), "classifier.3.bias": (1000,)},
    "efficientnet_b0": {"classifier.1.weight": (1000, 1280), "classifier.1.bias": (1000,)},
}


# The mobile encoders by name: a file in torchvision's layout (the encoder's own keys plus the ImageNet
# classifier) published at a file:// URL, verified, converted, cached, then read again offline.
@pytest.mark.parametrize("encoder,arch,options", [
    ("mobilenet_v3_large", "lraspp", {}),
    ("mobilenet_v3_small", "deeplabv3plus", {"encoder": "mobilenet_v3_small", "multi_grid": None}),
    ("efficientnet_b0", "pspnet", {"encoder": "efficientnet_b0"}),
])
def test_mobile_encoders_load_imagenet_by_name_and_offline(cache, monkeypatch, tmp_path, encoder, arch, options):
    from segbench.checkpoints.load import imagenet_weights_fit

    state = _random(build_encoder(encoder).state_dict())
    state |= {k: torch.randn(shape) for k, shape in IMAGENET_CLASSIFIERS[encoder].items()}
    path = tmp_path / f"{encoder}-test.pth"
    torch.save(state, path)
    _publish(monkeypatch, encoder, path, _sha256(path)[:8])
    assert imagenet_weights_fit(arch, options)[0]
    model = build_pretrained_model(arch, 3, pretrained="imagenet", **options)
    for key, value in model.encoder.state_dict().items():  # the file's values, exactly
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    report = model.pretrained_report
    assert sorted(report.skipped) == sorted(IMAGENET_CLASSIFIERS[encoder]) and not report.adapted
    assert not any(k.startswith("encoder.") for k in report.missing)
    monkeypatch.setenv("SEGBENCH_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    path.unlink()  # offline, the publisher gone: the cache alone, on one input channel
    model = build_pretrained_model(arch, 3, in_channels=1, pretrained="imagenet", **options)
    stem = state["features.0.0.weight"]
    torch.testing.assert_close(model.encoder.features[0][0].weight, stem.sum(1, keepdim=True))
    assert model.pretrained_report.adapted == ["encoder.features.0.0.weight"]


def test_imagenet_needs_an_encoder_that_has_weights(cache):
    with pytest.raises(ValueError, match=r"'unet' uses its own encoder .*resnet50.*mit_b0.*swin_t"):
        build_pretrained_model("unet", 2, base_width=8, pretrained="imagenet")


def test_pretrained_value_must_be_none_imagenet_or_a_file(cache):
    with pytest.raises(FileNotFoundError, match="'imagenet'"):
        build_pretrained_model("fcn", 2, encoder="resnet18", pretrained="imagenett")


def test_whole_segbench_checkpoint_for_other_classes_keeps_all_but_the_classifiers(tmp_path):
    source = build_model("fcn", 5, encoder="resnet18", aux_head=True)
    source.load_state_dict(_random(source.state_dict()))
    torch.save(source.state_dict(), tmp_path / "fcn5.pt")
    model = build_pretrained_model("fcn", 3, encoder="resnet18", aux_head=True, pretrained=tmp_path / "fcn5.pt")
    report = model.pretrained_report
    assert report.layout == "segbench" and report.scope == "model"
    left = {"classifier.weight", "classifier.bias", "aux_head.4.weight", "aux_head.4.bias"}
    assert set(report.missing) == left and set(report.skipped) == left
    expected = source.state_dict()
    for key, value in model.state_dict().items():
        if key not in left:
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_a_backbone_of_another_family_is_refused_by_name(tmp_path, torchvision_resnet18):
    path, _ = torchvision_resnet18
    with pytest.raises(ValueError, match=r"resnet backbone .*'mit_b0'"):
        build_pretrained_model("segformer", 2, pretrained=path)


# ---- local files in the publishers' layouts ----------------------------------------------------------


def test_torchvision_file_loads_into_any_resnet_model(torchvision_resnet18):
    path, state = torchvision_resnet18
    model = build_pretrained_model("upernet", 4, encoder="resnet18", channels=16, aux_channels=8, pretrained=str(path))
    assert model.pretrained_report.layout == "torchvision"
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def microsoft_swin_classifier(encoder_state: dict[str, torch.Tensor]) -> dict:
    """Microsoft's ImageNet release layout from a segbench Swin encoder's tensors: no output norms
    ``norm{i}``, a final ``norm`` and ``head``, the buffers ``relative_position_index`` and ``attn_mask``."""
    state = {k: v for k, v in encoder_state.items() if not re.fullmatch(r"norm\d\.(weight|bias)", k)}
    for key in [k for k in state if k.endswith("attn.relative_position_bias_table")]:
        state[key.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(49, 49).long()
    last = encoder_state["norm3.weight"].shape[0]
    state |= {"norm.weight": torch.randn(last), "norm.bias": torch.randn(last)}
    state |= {"head.weight": torch.randn(1000, last), "head.bias": torch.randn(1000), "layers.0.blocks.1.attn_mask":
              torch.zeros(16, 49, 49)}  # fmt: skip
    return {"model": state}


def test_microsoft_swin_file_loads_into_upernet(tmp_path):
    encoder = _random(build_encoder("swin_t", **SWIN_ENCODER).state_dict())
    torch.save(microsoft_swin_classifier(encoder), tmp_path / "swin.pth")
    model = build_pretrained_model("upernet", 3, **SWIN, pretrained=tmp_path / "swin.pth")
    report = model.pretrained_report
    assert report.layout == "microsoft" and report.scope == "encoder"
    loaded = model.encoder.state_dict()
    for key, value in encoder.items():
        if re.fullmatch(r"norm\d\.weight", key):  # the classification net has no output norms: identity
            torch.testing.assert_close(loaded[key], torch.ones_like(value))
        elif re.fullmatch(r"norm\d\.bias", key):
            torch.testing.assert_close(loaded[key], torch.zeros_like(value))
        else:
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert sorted(report.adapted) == [f"encoder.norm{i}.{p}" for i in range(4) for p in ("bias", "weight")]


def hub_mit_classifier(encoder_state: dict[str, torch.Tensor], num_labels: int = 1000) -> dict[str, torch.Tensor]:
    """The key layout of the Hub's ``nvidia/mit-b*`` files (transformers 4.x ``SegformerForImageClassification``),
    written from a segbench MiT encoder's tensors: keys and values split as Hugging Face stores them."""
    block = {"norm1": "layer_norm_1", "attn.q": "attention.self.query", "attn.sr": "attention.self.sr",
             "attn.norm": "attention.self.layer_norm", "attn.proj": "attention.output.dense", "norm2": "layer_norm_2",
             "mlp.fc1": "mlp.dense1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.dense2"}  # fmt: skip
    out = {}
    for key, value in encoder_state.items():
        if m := re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(\w+)", key):
            part = "proj" if m[2] == "proj" else "layer_norm"
            out[f"segformer.encoder.patch_embeddings.{int(m[1]) - 1}.{part}.{m[3]}"] = value
        elif m := re.fullmatch(r"norm(\d)\.(\w+)", key):
            out[f"segformer.encoder.layer_norm.{int(m[1]) - 1}.{m[2]}"] = value
        elif m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)\.(weight|bias)", key):
            prefix = f"segformer.encoder.block.{int(m[1]) - 1}.{m[2]}"
            if m[3] == "attn.kv":
                k, v = value.chunk(2)
                out[f"{prefix}.attention.self.key.{m[4]}"], out[f"{prefix}.attention.self.value.{m[4]}"] = k, v
            else:
                out[f"{prefix}.{block[m[3]]}.{m[4]}"] = value
    last = encoder_state["norm4.weight"].shape[0]
    return out | {"classifier.weight": torch.randn(num_labels, last), "classifier.bias": torch.randn(num_labels)}


@pytest.mark.parametrize("in_channels", [3, 4])
def test_hugging_face_mit_file_loads_into_segformer(tmp_path, in_channels):
    encoder = _random(build_encoder("mit_b0", **MIT_ENCODER).state_dict())
    torch.save(hub_mit_classifier(encoder), tmp_path / "pytorch_model.bin")
    model = build_pretrained_model("segformer", 3, in_channels=in_channels, **MIT, pretrained=tmp_path / "pytorch_model.bin")
    assert (model.pretrained_report.layout, model.pretrained_report.scope) == ("hf", "encoder")
    loaded = model.encoder.state_dict()
    for key, value in encoder.items():
        if key != "patch_embed1.proj.weight" or in_channels == 3:
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    # MiT has no adapt_state_dict: the first conv is adapted generically (RGB repeated, scaled by 3/n).
    rgb = encoder["patch_embed1.proj.weight"]
    expected = rgb if in_channels == 3 else torch.cat([rgb, rgb[:, :1]], dim=1) * 3 / 4
    torch.testing.assert_close(loaded["patch_embed1.proj.weight"], expected)
    assert model.pretrained_report.adapted == ([] if in_channels == 3 else ["encoder.patch_embed1.proj.weight"])


# ---- the table -------------------------------------------------------------------------------------------


def test_every_encoder_family_with_published_weights_has_a_well_formed_row():
    for name, entry in ENCODERS.items():
        if entry.kind in ("resnet", "vgg", "mobilenetv3", "efficientnet", "mit", "swin"):  # published weights
            assert name in pretrained.IMAGENET_WEIGHTS, f"no ImageNet row for {name} ({entry.kind})"
    rows = pretrained.IMAGENET_WEIGHTS.values()
    assert len({row.filename for row in rows}) == len(rows)
    for name, row in pretrained.IMAGENET_WEIGHTS.items():
        assert row.source in ("torchvision", "hf", "microsoft") and row.url.startswith("https://")
        if row.sha256 is None:
            assert row.note.startswith("unchecked")
        else:
            assert re.fullmatch(r"[0-9a-f]{8}|[0-9a-f]{64}", row.sha256)
        if row.source == "torchvision":  # torchvision's check_hash: the name carries the digest's prefix
            assert re.search(rf"/{name}(_rwightman)?-{row.sha256}\.pth$", row.url) and row.url.endswith(row.filename)
        if row.source == "hf":  # pinned to one revision, so the digest cannot go stale
            assert re.search(r"/resolve/[0-9a-f]{40}/pytorch_model\.bin$", row.url)


# ---- whole segmentation checkpoints of other toolkits ------------------------------------------------


def test_microsoft_segmentation_release_for_other_classes_loads_all_but_the_classifiers(tmp_path):
    from segbench.checkpoints.convert.swin import to_format

    source = build_model("upernet", 5, **SWIN)
    source.load_state_dict(_random(source.state_dict()))
    torch.save({"meta": {}, "state_dict": to_format(source.state_dict(), "microsoft")}, tmp_path / "upernet.pth")
    model = build_pretrained_model("upernet", 3, **SWIN, pretrained=tmp_path / "upernet.pth")
    report = model.pretrained_report
    assert (report.layout, report.scope) == ("microsoft", "model")
    assert set(report.missing) == {"classifier.weight", "classifier.bias", "aux_head.4.weight", "aux_head.4.bias"}
    expected = source.state_dict()
    for key, value in model.state_dict().items():
        if key not in report.missing:
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_a_head_segbench_lacks_falls_back_to_the_backbone_with_a_warning(tmp_path):
    from segbench.checkpoints.convert.segformer import to_mmseg

    source = build_model("segformer", 4, **MIT, projection_bn=True)  # MMSegmentation's head variant
    source.load_state_dict(_random(source.state_dict()))
    torch.save({"state_dict": to_mmseg(source.state_dict())}, tmp_path / "mmseg.pth")
    with pytest.warns(UserWarning, match="projection_bn=True"):
        model = build_pretrained_model("segformer", 4, **MIT, pretrained=tmp_path / "mmseg.pth")
    assert model.pretrained_report.scope == "encoder" and "only its backbone" in str(model.pretrained_report)
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, source.encoder.state_dict()[key], rtol=0, atol=0)


def test_vgg16_imagenet_file_becomes_fcn_fc6_and_fc7(cache, monkeypatch, tmp_path):
    trunk = _random(build_encoder("vgg16", base_width=4).state_dict())  # widths 4..32; FCN's fc width 256
    fc = {"classifier.0.weight": torch.randn(256, 32 * 49), "classifier.0.bias": torch.randn(256),
          "classifier.3.weight": torch.randn(256, 256), "classifier.3.bias": torch.randn(256),
          "classifier.6.weight": torch.randn(1000, 256), "classifier.6.bias": torch.randn(1000)}  # fmt: skip
    torch.save(trunk | fc, tmp_path / "vgg16.pth")
    _publish(monkeypatch, "vgg16", tmp_path / "vgg16.pth", _sha256(tmp_path / "vgg16.pth")[:8])
    model = build_pretrained_model("fcn8s", 3, base_width=4, pretrained="imagenet")
    torch.testing.assert_close(model.encoder.fc6.weight, fc["classifier.0.weight"].reshape(256, 32, 7, 7))
    torch.testing.assert_close(model.encoder.fc7.weight[:, :, 0, 0], fc["classifier.3.weight"])
    torch.testing.assert_close(model.encoder.features[28].weight, trunk["features.28.weight"], rtol=0, atol=0)
    report = model.pretrained_report
    assert sorted(report.adapted) == [f"encoder.fc{i}.{p}" for i in (6, 7) for p in ("bias", "weight")]
    assert sorted(report.skipped) == sorted(fc)  # consumed into fc6/fc7, or the ImageNet classes


def test_hugging_face_snapshot_folder_with_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    encoder = _random(build_encoder("mit_b0", **MIT_ENCODER).state_dict())
    safetensors.save_file({k: v.contiguous().clone() for k, v in hub_mit_classifier(encoder).items()},
                          str(tmp_path / "model.safetensors"))  # fmt: skip
    model = build_pretrained_model("segformer", 3, **MIT, pretrained=tmp_path)
    assert model.pretrained_report.weights == str(tmp_path / "model.safetensors")
    kv = encoder["block2.1.attn.kv.weight"]
    torch.testing.assert_close(model.encoder.block2[1].attn.kv.weight, kv, rtol=0, atol=0)


def test_a_deeper_backbone_of_the_same_family_is_refused(tmp_path):
    deeper = _random(build_encoder("swin_t", **{**SWIN_ENCODER, "depths": (1, 2, 2, 1)}).state_dict())
    torch.save(microsoft_swin_classifier(deeper), tmp_path / "deeper.pth")
    with pytest.raises(ValueError, match=r"layers\.2\.blocks\.1\..*beyond the model's depth"):
        build_pretrained_model("upernet", 3, **SWIN, pretrained=tmp_path / "deeper.pth")
    resnet34 = _random(build_encoder("resnet34").state_dict())  # every ResNet-18 key is in it, same shape
    torch.save(resnet34, tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match=r"layer1\.2\..*beyond the model's depth"):
        build_pretrained_model("upernet", 4, encoder="resnet18", channels=16, aux_channels=8, pretrained=tmp_path / "resnet34.pth")
    from segbench.checkpoints.load import load_backbone_weights

    with pytest.raises(ValueError, match=r"deeper than the encoder.*layer1\.2\."):
        load_backbone_weights(build_encoder("resnet18"), resnet34)
